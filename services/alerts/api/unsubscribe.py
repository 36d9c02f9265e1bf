"""One-click unsubscribe (RFC 8058): the link in every email, answered without an API key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from services.alerts import endpoints
from services.alerts.api.deps import UnsubscribePageEndpoint, UnsubscribingEndpoint
from services.core import audit
from services.core.api import Now, WriteSession
from services.core.auth import Principal
from services.core.problems import problem_responses

router = APIRouter(prefix="/v1/unsubscribe", tags=["unsubscribe"])

# The page is served to anyone holding the link: it loads nothing and posts only to itself.
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}
_CONFIRM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Unsubscribe</title></head>
<body><h1>Stop riskalert emails to this address?</h1>
<form method="post"><button type="submit">Unsubscribe</button></form>
</body></html>
"""
_DONE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Unsubscribed</title></head>
<body><h1>Unsubscribed</h1><p>This address will get no more riskalert emails.</p></body></html>
"""
_HTML: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {}}, "description": "An HTML page."}
}


@router.get(
    "/{token}",
    response_class=HTMLResponse,
    responses={**_HTML, **problem_responses(404)},
    summary="The page behind an email's unsubscribe link (no key)",
)
def unsubscribe_page(endpoint: UnsubscribePageEndpoint) -> HTMLResponse:
    """A confirmation form: a mail client fetching the link does not unsubscribe anyone."""
    return HTMLResponse(_CONFIRM, headers=_HEADERS)


@router.post(
    "/{token}",
    response_class=HTMLResponse,
    responses={**_HTML, **problem_responses(404)},
    summary="Unsubscribe an email address in one click (RFC 8058, no key)",
)
def unsubscribe(endpoint: UnsubscribingEndpoint, session: WriteSession, now: Now) -> HTMLResponse:
    """Disable the email endpoint the link names; repeating it changes nothing."""
    before = endpoints.snapshot(endpoint)
    if endpoints.unsubscribe(session, endpoint, now):
        # No key made this change: the entry carries the tenant and no key id.
        recipient = Principal(key_id=None, tenant_id=endpoint.tenant_id, roles=frozenset())
        audit.record(
            session,
            recipient,
            action="endpoint.unsubscribe",
            resource=f"endpoint/{endpoint.id}",
            before=before,
            after=endpoints.snapshot(endpoint),
            now=now,
        )
    return HTMLResponse(_DONE, headers=_HEADERS)
