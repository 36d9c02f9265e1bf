"""The ops dashboard end to end: headless Chromium (Debian's `chromium`) driven by Playwright
through its executable path, against a real `riskalert serve` on the demo data, on SQLite and
PostgreSQL.

Without Chromium the tests are skipped, except under CI=true, where they fail (`.ci/run`
installs it). Screenshots of each page go to $RISKALERT_SCREENSHOTS when it is set (the ones in
docs/ were made with RISKALERT_SCREENSHOTS=docs/img), else to the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from services.scoring.demo import DEMO_INGEST_KEY, DEMO_TENANT_KEY
from tests.scenarios.harness import (
    Database,
    Receiver,
    Reply,
    Riskalert,
    Server,
    run_command,
    wait_until,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root, without a sandbox; no calls to Google's services on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# The documented palette (docs/dashboard.md): a site's marker is filled with its band's colour.
BAND_COLOURS = {
    "low": "#2e7d32",
    "moderate": "#9e9d24",
    "elevated": "#f9a825",
    "high": "#e65100",
    "critical": "#b71c1c",
}
AUTH = {"Authorization": f"Bearer {DEMO_TENANT_KEY}"}
UI_TIMEOUT_MS = 60_000
AXE = Path(__file__).parents[1] / "fixtures" / "axe" / "axe.min.js"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def server(riskalert: Riskalert, database: Database, tmp_path: Path) -> Server:
    """`riskalert serve` on a database loaded by `riskalert demo`."""
    run_command("demo", database.url, tmp_path / "demo.log")
    return riskalert.serve()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    """A signed-in dashboard tab, on a laptop-sized screen."""
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    # Loaded by the browser itself before the page's scripts: the page's CSP does not apply.
    context.add_init_script(path=AXE)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{server.url}/dashboard/")
    # Signed out, the page asks for a key: typed and sent with the keyboard only.
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type(DEMO_TENANT_KEY)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"#/map$"))
    try:
        yield page
    finally:
        context.close()
    assert problems == [], f"errors in the page: {problems}"


def shots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("RISKALERT_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


def map_drawn(page: Page) -> str:
    """Wait until the map has drawn; return the time it shows ("now" or an ISO instant)."""
    page.locator('#map[data-ready="true"]').wait_for()
    return page.locator("#map").get_attribute("data-as-of") or ""


def marker_bands(page: Page) -> dict[int, tuple[str, str]]:
    """Each site marker's (band, fill colour) as drawn."""
    drawn: dict[int, tuple[str, str]] = {}
    for marker in page.locator("path.site-marker").all():
        site_id = int(marker.get_attribute("data-site-id") or 0)
        drawn[site_id] = (
            marker.get_attribute("data-band") or "",
            marker.get_attribute("fill") or "",
        )
    return drawn


def unlabelled_controls(page: Page) -> list[str]:
    """Form controls a screen reader could not name."""
    found: list[str] = page.evaluate(
        """() => [...document.querySelectorAll('main input, main select, main button')]
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                          && !(el.tagName === 'BUTTON' && el.textContent.trim()))
            .map(el => el.outerHTML.slice(0, 80))"""
    )
    return found


def accessibility_problems(page: Page) -> list[str]:
    """Serious and critical WCAG 2 A/AA violations axe-core finds on the page as it is now."""
    result = page.evaluate("() => axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']}: {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def api_get(server: Server, path: str) -> Any:
    response = httpx.get(f"{server.url}{path}", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def api_post(server: Server, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{server.url}{path}", headers=AUTH, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_map_shows_the_demo_sites_in_their_band_colours_and_the_slider_goes_back_in_time(
    page: Page, server: Server, tmp_path: Path
) -> None:
    assert map_drawn(page) == "now"
    sites = api_get(server, "/v1/sites?limit=500")["features"]
    assert len(sites) >= 3
    now = {s["id"]: s["properties"]["current_score"]["band"] for s in sites}
    assert marker_bands(page) == {i: (band, BAND_COLOURS[band]) for i, band in now.items()}
    assert page.locator("path.incident-marker").count() == 0  # the demo's are from 2025
    # A site marker takes the keyboard: focused, Enter opens its popup with a link to its page.
    page.locator("path.site-marker").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator(".leaflet-popup-content a")).to_have_text("Score, explanation and history")
    assert unlabelled_controls(page) == []
    assert accessibility_problems(page) == []
    page.screenshot(path=shots(tmp_path) / "dashboard-map-now.png")

    # Back to mid-2025, when the demo timeline happened: the slider counts days from today.
    days_back = (datetime.now(UTC) - datetime(2025, 6, 20, tzinfo=UTC)).days
    page.get_by_label("As of").fill(str(-days_back))
    as_of = ""
    for _ in range(3):  # the slider may still report the previous drawing once
        as_of = map_drawn(page)
        if as_of.startswith("2025-06-2"):
            break
        page.wait_for_timeout(500)
    assert as_of.startswith("2025-06-2"), as_of
    expected = api_post(
        server,
        "/v1/backtests",
        {"targets": [{"kind": "site", "id": i} for i in now], "times": [as_of]},
    )
    then = {i: expected["bands"][n][0] for n, i in enumerate(now)}
    assert marker_bands(page) == {i: (band, BAND_COLOURS[band]) for i, band in then.items()}
    assert then != now, "mid-2025 looks different from today"
    assert page.locator("path.incident-marker").count() > 0
    expect(page.locator("#as-of-value")).to_have_text(as_of[:10])
    page.screenshot(path=shots(tmp_path) / "dashboard-map-2025.png")


def test_a_target_page_explains_its_score_as_of_a_past_time_and_charts_its_history(
    page: Page, server: Server, tmp_path: Path
) -> None:
    map_drawn(page)
    as_of = "2025-06-20T12:00:00Z"
    sites = api_get(server, "/v1/sites?limit=500")["features"]
    scored = [(api_get(server, f"/v1/sites/{s['id']}/score?as_of={as_of}"), s) for s in sites]
    score, site = max(scored, key=lambda pair: pair[0]["score"])
    assert score["contributions"], "the demo's worst site in June 2025 has incidents behind it"
    page.goto(f"{server.url}/dashboard/#/sites/{site['id']}?as_of={as_of}")
    expect(page.get_by_role("heading", level=1)).to_contain_text(site["properties"]["name"])
    expect(page.locator("#score-value")).to_have_text(f"{score['score']:.1f}")
    expect(page.locator("ol.contributions > li")).to_have_count(len(score["contributions"]))
    expect(page.get_by_text(score["contributions"][0]["why"]).first).to_be_visible()
    expect(page.locator("#history-chart canvas")).to_have_count(1)
    assert unlabelled_controls(page) == []
    assert accessibility_problems(page) == []
    page.screenshot(path=shots(tmp_path) / "dashboard-target.png", full_page=True)
    page.get_by_text("Score history as a table").click()
    assert page.locator("details table tbody tr").count() == 105  # weekly, two years


def test_an_alert_that_fires_is_marked_on_the_targets_history(page: Page, server: Server) -> None:
    map_drawn(page)
    site = next(
        s
        for s in api_get(server, "/v1/sites?limit=500")["features"]
        if s["properties"]["expat_staff"]
    )
    lon, lat = site["geometry"]["coordinates"]
    # A kidnapping 5 km from the site, now: the demo subscription's event rule alerts at once.
    kidnapping = {
        "source": "dashboard-test",
        "source_id": "k-1",
        "category": "kidnapping",
        "occurred_at": datetime.now(UTC).isoformat(),
        "location": {"type": "Point", "coordinates": [lon + 0.045, lat]},
        "title": "Engineers kidnapped on the mine road",
    }
    posted = httpx.post(
        f"{server.url}/v1/incidents",
        headers={"Authorization": f"Bearer {DEMO_INGEST_KEY}"},
        json=kidnapping,
        timeout=30,
    )
    assert posted.status_code == 201, posted.text
    wait_until(
        lambda: api_get(server, f"/v1/alerts?target_id={site['id']}")["alerts"] != [],
        timeout=60,
        what="the kidnapping alert",
    )
    page.goto(f"{server.url}/dashboard/#/sites/{site['id']}")
    expect(page.locator("#history-chart")).to_contain_text("the 1 alert(s) that fired")
    page.get_by_text("Score history as a table").click()
    expect(page.locator("details caption")).to_contain_text("(triggered)")


def test_a_threshold_edit_shows_its_preview_next_to_the_current_rule_and_saves(
    page: Page, server: Server, tmp_path: Path
) -> None:
    map_drawn(page)
    (subscription,) = api_get(server, "/v1/subscriptions")["subscriptions"]
    rule = next(r for r in subscription["rules"] if r["kind"] == "threshold")
    page.get_by_role("link", name="Thresholds").click()
    page.locator("#rules-table a").first.click()
    page.wait_for_url(re.compile(rf"#/thresholds/{subscription['id']}/{rule['id']}$"))
    assert unlabelled_controls(page) == []
    assert accessibility_problems(page) == []

    # A refused value is named with its field, and nothing is saved.
    page.get_by_label("Raise at").fill("very high")
    page.get_by_role("button", name="Save the rule").click()
    expect(page.get_by_role("alert")).to_contain_text("raise_at")
    expect(page.locator("#saved")).to_have_text("")

    page.get_by_label("Raise at").fill("25")
    page.get_by_label("Clear below").fill("15")
    page.get_by_label("From").fill("2025-05-01")
    page.get_by_label("To").fill("2025-07-31")
    page.get_by_role("button", name="Preview on history").click()
    expect(page.locator("#preview-summary")).to_be_visible()
    expected = api_post(
        server,
        "/v1/alert-previews",
        {
            "rule_id": rule["id"],
            "changes": {"raise_at": 25, "clear_at": 15},
            "since": "2025-05-01T00:00:00Z",
            "until": "2025-07-31T23:59:59Z",
            "step": "P1D",
        },
    )
    assert expected["total"] > expected["baseline"]["total"], "a lower threshold raises more"
    expect(page.locator("#edited-total")).to_have_text(str(expected["total"]))
    expect(page.locator("#current-total")).to_have_text(str(expected["baseline"]["total"]))
    assert page.locator("#preview-alerts > li").count() == len(expected["alerts"])
    page.screenshot(path=shots(tmp_path) / "dashboard-thresholds.png", full_page=True)

    page.get_by_role("button", name="Save the rule").click()
    expect(page.locator("#saved")).to_contain_text("Saved")
    stored = api_get(server, f"/v1/subscriptions/{subscription['id']}")
    (saved,) = [r for r in stored["rules"] if r["id"] == rule["id"]]
    assert (saved["raise_at"], saved["clear_at"]) == (25, 15)
    assert saved["pending"] == rule["pending"]  # untouched fields stay as they were


def test_a_failed_delivery_shows_its_attempts_and_is_replayed(
    page: Page, server: Server, receiver: Receiver, tmp_path: Path
) -> None:
    map_drawn(page)
    created = httpx.post(
        f"{server.url}/v1/endpoints",
        headers=AUTH,
        json={"kind": "webhook", "name": "ops", "url": receiver.url("/down")},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    hook = created.json()
    receiver.expect("/down", hook["secret"])
    receiver.script("/down", [], then=Reply(status=500))
    queued = httpx.post(f"{server.url}/v1/endpoints/{hook['id']}/test", headers=AUTH, timeout=30)
    assert queued.status_code == 202, queued.text
    delivery_id = queued.json()["id"]
    wait_until(
        lambda: api_get(server, f"/v1/deliveries/{delivery_id}")["status"] == "failed",
        timeout=60,
        what="the test delivery to fail",
    )
    attempts = api_get(server, f"/v1/deliveries/{delivery_id}")["attempt_log"]

    page.get_by_role("link", name="Deliveries").click()
    row = page.locator(f'tr[data-delivery-id="{delivery_id}"]')
    expect(row).to_contain_text("endpoint.test")
    row.get_by_role("button", name="Attempts").click()
    attempt_rows = page.locator(f'tr[data-delivery-id="{delivery_id}"] + tr tbody tr')
    expect(attempt_rows).to_have_count(len(attempts))
    expect(attempt_rows.first).to_contain_text("500")
    assert unlabelled_controls(page) == []
    assert accessibility_problems(page) == []
    page.screenshot(path=shots(tmp_path) / "dashboard-deliveries.png", full_page=True)

    sent = len(receiver.got("/down"))
    row.get_by_role("button", name="Replay").click()
    expect(row).to_contain_text("queued again")
    wait_until(lambda: len(receiver.got("/down")) > sent, timeout=30, what="the replayed delivery")


def test_a_bad_key_is_refused_plainly(browser: Browser, server: Server) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        page.goto(f"{server.url}/dashboard/")
        page.get_by_label("API key").fill("rak_" + "x" * 43)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("401")
        assert page.url.endswith("#/sign-in")
    finally:
        context.close()
