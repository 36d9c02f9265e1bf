"""API keys and roles: who is calling, for which tenant, allowed to do what."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.core.models import ApiKey
from services.core.problems import Problem

KEY_PREFIX = "rak_"


class Role(StrEnum):
    """What a key may do."""

    SCORES_READ = "scores:read"
    TARGETS_WRITE = "targets:write"
    INCIDENTS_WRITE = "incidents:write"
    ALERTS_READ = "alerts:read"
    ALERTS_WRITE = "alerts:write"
    ADMIN = "admin"


TENANT_ROLES = frozenset(
    {Role.SCORES_READ, Role.TARGETS_WRITE, Role.ALERTS_READ, Role.ALERTS_WRITE}
)
PLATFORM_ROLES = frozenset({Role.INCIDENTS_WRITE, Role.ADMIN})


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a request's API key."""

    key_id: int | None  # None for the bootstrap admin key from settings
    tenant_id: int | None
    roles: frozenset[Role]

    @property
    def ident(self) -> str:
        """A stable name for idempotency records and audit entries."""
        return f"key:{self.key_id}" if self.key_id is not None else "admin:bootstrap"

    def has(self, role: Role) -> bool:
        """Tell whether the key carries `role`; a platform admin holds every platform role."""
        if self.tenant_id is not None:
            # Whatever was stored, a tenant's key never holds a platform-wide power.
            return role in self.roles and role in TENANT_ROLES
        return role in self.roles or Role.ADMIN in self.roles


def hash_key(raw: str) -> str:
    """Hash a raw key for storage and lookup (keys are random, so a plain digest suffices)."""
    return hashlib.sha256(raw.encode()).hexdigest()


def generate_key() -> tuple[str, str, str]:
    """Return a new raw key, its display prefix and its hash."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    return raw, raw[:12], hash_key(raw)


class KeyCache:
    """Resolved keys for a few seconds, so hot read paths skip the key lookup."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    def get(self, key_hash: str) -> tuple[bool, Principal | None]:
        """Return (hit, principal) for a hash."""
        with self._lock:
            entry = self._entries.get(key_hash)
            if entry is None or entry[0] < self._clock():
                return False, None
            return True, entry[1]

    def put(self, key_hash: str, principal: Principal | None) -> None:
        """Remember a resolution (None for an unknown or revoked key)."""
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key_hash] = (self._clock() + self._ttl, principal)

    def clear(self) -> None:
        """Forget everything, as after a key is revoked in this process."""
        with self._lock:
            self._entries.clear()


def principal_for(session: Session, key_hash: str) -> Principal | None:
    """Look a hashed key up; None when unknown or revoked."""
    row = session.execute(
        select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None:
        return None
    return Principal(row.id, row.tenant_id, frozenset(Role(r) for r in row.roles))


def _lookup(factory: sessionmaker[Session], key_hash: str) -> Principal | None:
    with factory() as session:
        return principal_for(session, key_hash)


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer rak_...`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or `X-API-Key: rak_...`")


async def authenticate(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
) -> Principal:
    """Resolve the caller's key, or answer 401 (400 when two credentials disagree)."""
    state = request.app.state
    if request.headers.get("authorization") is not None and bearer is None:
        # Not ignored beside a valid X-API-Key: a malformed credential is an error.
        raise _refused(request, 401, "the Authorization header must be 'Bearer <key>'")
    if (
        bearer is not None
        and header is not None
        and not hmac.compare_digest(bearer.credentials, header)
    ):
        raise _refused(
            request, 400, "Authorization and X-API-Key name different keys: send one of them"
        )
    raw = header or (bearer.credentials if bearer else None)
    if not raw:
        raise _refused(request, 401, "an API key is required (Authorization: Bearer or X-API-Key)")
    key_hash = hash_key(raw)
    admin_hash: str | None = state.admin_key_hash
    if admin_hash is not None and hmac.compare_digest(key_hash, admin_hash):
        admin = Principal(None, None, frozenset({Role.ADMIN}))
        count(state, admin)
        return admin
    cache: KeyCache = state.key_cache
    hit, principal = cache.get(key_hash)
    if not hit:
        principal = await run_in_threadpool(_lookup, state.read_sessions, key_hash)
        cache.put(key_hash, principal)
    if principal is None:
        raise _refused(request, 401, "unknown or revoked API key")
    count(state, principal)
    return principal


# What generate_key makes (token_urlsafe), and what a shortcut accepts without the full checks.
_PLAIN_KEY = re.compile(rb"[A-Za-z0-9_\-]{1,256}")


def known_caller(
    state: Any, authorization: bytes | None, api_key: bytes | None
) -> Principal | None:
    """The tenant caller of a request whose one credential, in its plainest form, resolves
    from the key cache without the database: for shortcuts that answer before the routes.

    None whenever anything is less plain (two credentials, another scheme, a key that is not
    cached, the bootstrap admin key): the route's own `authenticate` then decides, with its
    errors. Nothing is counted here; the caller counts the request with `count`.
    """
    if (authorization is None) == (api_key is None):
        return None
    if authorization is not None:
        scheme, _, raw = authorization.partition(b" ")
        if scheme != b"Bearer":
            return None
    else:
        raw = api_key or b""
    if _PLAIN_KEY.fullmatch(raw) is None:
        return None
    key_hash = hash_key(raw.decode())
    admin_hash: str | None = state.admin_key_hash
    if admin_hash is not None and hmac.compare_digest(key_hash, admin_hash):
        return None
    cache: KeyCache = state.key_cache
    hit, principal = cache.get(key_hash)
    if not hit or principal is None or principal.tenant_id is None:
        return None
    return principal


def count(state: Any, principal: Principal) -> None:
    """Count a request against its key's rate limit (raises the 429 problem when over)."""
    state.key_limits.hit(principal.ident)


def tenant_holds(principal: Principal, roles: Iterable[Role]) -> bool:
    """Whether a tenant's key holds any of `roles` (what `require_tenant` admits)."""
    return principal.tenant_id is not None and any(role in principal.roles for role in roles)


def _refused(request: Request, status: int, detail: str) -> Problem:
    """A refused credential: counted against the unauthenticated limit of the caller's address,
    then 401 unauthenticated (with the Bearer challenge) or 400 conflicting-credentials."""
    request.app.state.anonymous_limits.hit(_address(request))
    if status == 401:
        return Problem(401, "unauthenticated", detail, headers={"WWW-Authenticate": "Bearer"})
    return Problem(status, "conflicting-credentials", detail)


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def require(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that admits callers holding any of `roles`."""

    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not any(principal.has(role) for role in roles):
            needed = " or ".join(roles)
            raise Problem(403, "forbidden", f"this key lacks the role {needed}")
        return principal

    return check


def require_tenant(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that admits tenant keys holding any of `roles`."""

    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if principal.tenant_id is None:
            raise Problem(403, "tenant-key-required", "this route needs a tenant's API key")
        if not tenant_holds(principal, roles):
            needed = " or ".join(roles)
            raise Problem(403, "forbidden", f"this key lacks the role {needed}")
        return principal

    return check


def roles_from(values: Iterable[str]) -> list[str]:
    """Validate and order role names for storage."""
    return sorted({Role(v).value for v in values})


AnyPrincipal = Annotated[Principal, Depends(authenticate)]
