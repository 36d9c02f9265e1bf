"""SSRF guard for webhook targets: which URLs and resolved addresses a delivery may reach."""

import ipaddress
import socket
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULT_PORTS = {"https": 443, "http": 80}
# Only used to name the reason; `is_private` already refuses these addresses.
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
# NAT64 well-known prefix: the last 32 bits are the IPv4 destination a translator reaches.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class Verdict:
    """Whether a delivery may go to a URL, and why (stored with the attempt)."""

    allowed: bool
    reason: str
    # The host did not resolve: a DNS failure (retried as such), not an address refused.
    unresolved: bool = False


@dataclass(frozen=True)
class _Entry:
    """One parsed allowlist entry: a host name or a network, optionally tied to a port."""

    name: str | None
    network: IPNetwork | None
    port: int | None


def _parse_ip(text: str) -> IPAddress | None:
    """The address written in `text`, or None when it is not an IP literal."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _unwrap(addr: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), else itself."""
    if isinstance(addr, ipaddress.IPv6Address):
        # Python < 3.13 classifies ::ffff:127.0.0.1 as merely "private"/"reserved" and
        # 6to4/NAT64 forms of internal addresses as global; judge the embedded IPv4 instead.
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.sixtofour is not None:
            return addr.sixtofour
        if addr.scope_id is None and addr in _NAT64:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr


def _kind(addr: IPAddress) -> str | None:
    """Why an already unwrapped address is not global, or None when it is."""
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    # Multicast is checked apart because Python < 3.13 reports ff00::/8 and 224/4 as global.
    if addr.is_multicast:
        return "multicast"
    if isinstance(addr, ipaddress.IPv6Address) and addr in _UNIQUE_LOCAL:
        return "unique-local"
    # Reserved comes before private so 240/4 and ::/8 (IPv4-compatible) get the precise name.
    if addr.is_reserved:
        return "reserved"
    if addr.is_private:
        return "private"
    if not addr.is_global:
        # E.g. 100.64.0.0/10 (carrier-grade NAT), neither private nor global.
        return "non-global"
    return None


def classify_address(addr: str) -> str | None:
    """None when `addr` is a global address; otherwise the kind that makes it unreachable."""
    parsed = _parse_ip(addr)
    if parsed is None:
        # A resolver that hands back something unparseable must not open the door.
        return "invalid"
    return _kind(_unwrap(parsed))


def _parse_entry(entry: str) -> _Entry:
    """Parse an allowlist entry: name, IP, CIDR, `host:port` or `[v6]:port`."""
    try:
        return _parse_entry_text(entry.strip().lower())
    except ValueError as exc:
        # A bad setting must be loud: silently skipping it would refuse a receiver for no
        # visible reason, and guessing could open more than intended.
        raise ValueError(f"invalid allowlist entry {entry!r}: {exc}") from exc


def _parse_entry_text(text: str) -> _Entry:
    """Parse one normalised allowlist entry; ValueError when it is malformed."""
    port: int | None = None
    if "/" in text:
        return _Entry(None, ipaddress.ip_network(text, strict=False), None)
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1 :]
        if close < 0 or (rest and not rest.startswith(":")):
            raise ValueError("expected [address] or [address]:port")
        host, port = text[1:close], int(rest[1:]) if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host = text
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    addr = _parse_ip(host.split("%", 1)[0])
    if addr is not None:
        return _Entry(None, ipaddress.ip_network(addr), port)
    if not host:
        raise ValueError("empty host")
    return _Entry(host.rstrip("."), None, port)


def parse_allowlist_entry(entry: str) -> None:
    """Check one allowlist entry; ValueError naming it when it is malformed."""
    _parse_entry(entry)


def _covered(addr: IPAddress, port: int, entries: Sequence[_Entry]) -> bool:
    """Whether an allowlisted network (with a matching port, if any) contains `addr`."""
    # Compare both the address as written and what it stands for: ::ffff:127.0.0.1 is
    # the same destination as 127.0.0.1.
    candidates = {addr, _unwrap(addr)}
    return any(
        e.network is not None
        and e.port in (None, port)
        and any(c.version == e.network.version and c in e.network for c in candidates)
        for e in entries
    )


def check_url(
    url: str, resolved: Sequence[str], *, allow_http: bool, allowlist: Collection[str]
) -> Verdict:
    """Decide whether a delivery may be sent to `url`, given what its host resolved to now."""
    try:
        parts = urlsplit(url.strip())
        port_in_url = parts.port
    except ValueError as exc:
        return Verdict(False, f"invalid URL: {exc}")
    scheme = parts.scheme
    if scheme != "https" and not (scheme == "http" and allow_http):
        return Verdict(False, f"scheme {scheme or '(none)'} not allowed")
    if "@" in parts.netloc:
        # Credentials in the URL would be sent to the receiver and stored with the endpoint.
        return Verdict(False, "userinfo in URL not allowed")
    host = parts.hostname
    if not host:
        return Verdict(False, "no host in URL")
    port = port_in_url if port_in_url is not None else _DEFAULT_PORTS[scheme]
    entries = [_parse_entry(e) for e in allowlist]

    name = host.rstrip(".")
    if any(e.name == name and e.port in (None, port) for e in entries):
        return Verdict(True, f"allowlisted host {host}")

    literal = _parse_ip(host)
    if literal is not None:
        if _covered(literal, port, entries):
            return Verdict(True, f"allowlisted address {host}")
        kind = _kind(_unwrap(literal))
        if kind is not None:
            return Verdict(False, f"{kind} address {host}")

    if not resolved:
        return Verdict(False, f"could not resolve host {host}", unresolved=True)
    for addr in resolved:
        kind = classify_address(addr)
        parsed = _parse_ip(addr)
        if kind is None or (parsed is not None and _covered(parsed, port, entries)):
            continue
        origin = "" if addr == host else f" (resolved from {host})"
        return Verdict(False, f"{kind} address {addr}{origin}")
    return Verdict(True, "allowed")


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to now, in resolver order; empty when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        # gaierror is an OSError; IDNA encoding of a malformed name raises UnicodeError.
        return []
    addresses: list[str] = []
    for family, _, _, _, sockaddr in infos:
        addr = sockaddr[0]
        # AF_INET/AF_INET6 only: other families (e.g. AF_PACKET) carry no IP to check.
        if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(addr, str):
            continue
        if addr not in addresses:
            addresses.append(addr)
    return addresses
