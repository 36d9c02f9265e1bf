"""SSRF guard: internal targets are refused, public ones allowed, the allowlist lets tests in."""

import pytest

from services.alerts.ssrf import Verdict, check_url, classify_address, resolve

PUBLIC = "93.184.216.34"


def check(
    url: str,
    resolved: list[str],
    *,
    allow_http: bool = False,
    allowlist: tuple[str, ...] = (),
) -> Verdict:
    return check_url(url, resolved, allow_http=allow_http, allowlist=allowlist)


@pytest.mark.parametrize(
    ("addr", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fd00::1", "unique-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("::7f00:1", "reserved"),
        ("2002:7f00:1::1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("100.64.0.1", "non-global"),
        ("not-an-address", "invalid"),
        (PUBLIC, None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_classify_address_names_why_an_address_is_not_global(addr: str, kind: str | None) -> None:
    assert classify_address(addr) == kind


@pytest.mark.parametrize(
    ("url", "resolved", "reason"),
    [
        ("https://127.0.0.1/hook", ["127.0.0.1"], "loopback address 127.0.0.1"),
        (
            "https://169.254.169.254/latest",
            ["169.254.169.254"],
            "link-local address 169.254.169.254",
        ),
        ("https://10.0.0.1/hook", ["10.0.0.1"], "private address 10.0.0.1"),
        ("https://[::1]:8443/hook", ["::1"], "loopback address ::1"),
        ("https://[::ffff:127.0.0.1]/", ["::ffff:127.0.0.1"], "loopback address ::ffff:127.0.0.1"),
        ("https://0.0.0.0/", ["0.0.0.0"], "unspecified address 0.0.0.0"),
        ("https://[fd00::1]/", ["fd00::1"], "unique-local address fd00::1"),
        ("https://[fe80::1%25eth0]/", ["fe80::1%eth0"], "link-local address fe80::1%25eth0"),
    ],
)
def test_ip_literal_targets_that_are_not_global_are_refused(
    url: str, resolved: list[str], reason: str
) -> None:
    assert check(url, resolved) == Verdict(False, reason)


def test_ip_literal_is_refused_even_when_the_resolved_list_looks_public() -> None:
    verdict = check("https://127.0.0.1/", [PUBLIC])
    assert verdict == Verdict(False, "loopback address 127.0.0.1")


def test_localhost_is_refused_by_what_it_resolves_to() -> None:
    verdict = check("https://localhost/hook", ["127.0.0.1", "::1"])
    assert not verdict.allowed
    assert verdict.reason == "loopback address 127.0.0.1 (resolved from localhost)"


def test_name_resolving_to_loopback_is_refused() -> None:
    verdict = check("https://rebind.example.com/hook", ["127.0.0.1"])
    assert verdict == Verdict(
        False, "loopback address 127.0.0.1 (resolved from rebind.example.com)"
    )


def test_name_resolving_to_metadata_service_is_refused() -> None:
    verdict = check("https://meta.example.com/", ["169.254.169.254"])
    assert not verdict.allowed
    assert "link-local address 169.254.169.254" in verdict.reason


def test_name_with_one_public_and_one_private_address_is_refused() -> None:
    verdict = check("https://mixed.example.com/", [PUBLIC, "10.1.2.3"])
    assert verdict == Verdict(False, "private address 10.1.2.3 (resolved from mixed.example.com)")


def test_unresolvable_name_is_refused() -> None:
    verdict = check("https://nowhere.example.com/", [])
    assert verdict == Verdict(False, "could not resolve host nowhere.example.com", unresolved=True)


def test_public_address_is_allowed_over_https() -> None:
    assert check(f"https://{PUBLIC}/hook", [PUBLIC]) == Verdict(True, "allowed")
    assert check("https://hooks.example.com/x", [PUBLIC, "2606:4700:4700::1111"]).allowed


def test_http_is_refused_unless_the_deployment_allows_it() -> None:
    assert check(f"http://{PUBLIC}/hook", [PUBLIC]) == Verdict(False, "scheme http not allowed")
    assert check(f"http://{PUBLIC}/hook", [PUBLIC], allow_http=True) == Verdict(True, "allowed")


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://h/"])
def test_other_schemes_are_refused_even_with_http_allowed(url: str) -> None:
    verdict = check(url, [PUBLIC], allow_http=True)
    assert not verdict.allowed
    assert verdict.reason.startswith("scheme ")


@pytest.mark.parametrize(
    "url",
    [
        f"https://user:secret@{PUBLIC}/hook",
        "https://user@hooks.example.com/hook",
        "https://@hooks.example.com/hook",
    ],
)
def test_userinfo_in_url_is_refused(url: str) -> None:
    assert check(url, [PUBLIC]) == Verdict(False, "userinfo in URL not allowed")


def test_malformed_urls_are_refused() -> None:
    assert not check("https://hooks.example.com:99999/", [PUBLIC]).allowed
    assert not check("https://[::1/", ["::1"]).allowed
    assert check("https:///path-only", [PUBLIC]) == Verdict(False, "no host in URL")


def test_allowlisted_loopback_receiver_is_allowed() -> None:
    url = "http://127.0.0.1:8081/hook"
    assert check(url, ["127.0.0.1"], allow_http=True, allowlist=("127.0.0.0/8",)) == Verdict(
        True, "allowlisted address 127.0.0.1"
    )
    assert check(url, ["127.0.0.1"], allow_http=True, allowlist=("127.0.0.1",)).allowed
    assert check(url, ["127.0.0.1"], allow_http=True, allowlist=("127.0.0.1:8081",)).allowed
    assert not check(url, ["127.0.0.1"], allow_http=True, allowlist=("127.0.0.1:9999",)).allowed


def test_allowlisted_host_name_is_allowed_whatever_it_resolves_to() -> None:
    allowlist = ("LocalHost",)
    verdict = check("https://localhost./hook", ["127.0.0.1"], allowlist=allowlist)
    assert verdict == Verdict(True, "allowlisted host localhost.")
    assert check("https://localhost:8443/", [], allowlist=("localhost:8443",)).allowed
    assert not check("https://localhost:8443/", ["127.0.0.1"], allowlist=("localhost:443",)).allowed


def test_allowlisted_ipv6_loopback_with_port() -> None:
    assert check("https://[::1]:8443/", ["::1"], allowlist=("[::1]:8443",)).allowed
    assert check("https://[::1]:8443/", ["::1"], allowlist=("::1",)).allowed
    assert not check("https://[::1]:8443/", ["::1"], allowlist=("[::1]:9000",)).allowed


def test_allowlisted_network_covers_names_only_for_the_addresses_inside_it() -> None:
    allowlist = ("10.0.0.0/8",)
    assert check("https://internal.corp/", ["10.2.3.4"], allowlist=allowlist).allowed
    verdict = check("https://internal.corp/", ["10.2.3.4", "127.0.0.1"], allowlist=allowlist)
    assert verdict == Verdict(False, "loopback address 127.0.0.1 (resolved from internal.corp)")


def test_allowlist_does_not_lift_the_scheme_or_userinfo_rules() -> None:
    allowlist = ("127.0.0.0/8",)
    assert not check("http://127.0.0.1/", ["127.0.0.1"], allowlist=allowlist).allowed
    assert not check("https://u:p@127.0.0.1/", ["127.0.0.1"], allowlist=allowlist).allowed


def test_unrelated_allowlist_entries_do_not_open_other_hosts() -> None:
    allowlist = ("hooks.internal", "192.168.0.0/16")
    verdict = check("https://10.0.0.1/", ["10.0.0.1"], allowlist=allowlist)
    assert verdict == Verdict(False, "private address 10.0.0.1")


def test_invalid_allowlist_entry_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="allowlist"):
        check("https://example.com/", [PUBLIC], allowlist=("[::1",))


def test_resolve_returns_literal_addresses_without_a_lookup() -> None:
    assert resolve("127.0.0.1", 443) == ["127.0.0.1"]


@pytest.mark.parametrize("entry", ["[::1", "host:http", "10.0.0.0/33", "h:70000", ":8080"])
def test_each_kind_of_malformed_allowlist_entry_is_reported(entry: str) -> None:
    with pytest.raises(ValueError, match="invalid allowlist entry"):
        check("https://example.com/", [PUBLIC], allowlist=(entry,))
