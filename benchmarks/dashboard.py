"""How long the dashboard's map takes to draw in a real browser, against the API calls it makes.

    .venv/bin/python -m benchmarks.dashboard                       # 100 and 1,000 sites, both
    .venv/bin/python -m benchmarks.dashboard --sites 100 --backend sqlite --rounds 3

For each size: a scratch database (SQLite file, or `riskalert_bench_dash_<pid>` on the
PostgreSQL at 127.0.0.1:5432) with that many sites, 20 corridors and 2,000 incidents of the last
year, served by `riskalert serve`. Headless Chromium (Debian's, driven by Playwright) opens the
map and waits until it has drawn; then moves the "As of" slider to a past day and waits again.
The baseline, in the same run: the same API requests the page makes for one drawing (sites,
corridors, scores as of the day, incidents, corridor hotspots), sent by httpx from Python one
after the other. Figures are medians over `--rounds`; the ratio says what the browser adds.
Results: benchmarks/results/dashboard-<UTC stamp>.json; docs/benchmarks.md keeps the latest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, sync_playwright

from benchmarks import data
from benchmarks.run import (
    ROOT,
    Server,
    bulk_ingest,
    log,
    machine,
    preload,
    scratch_database,
    start_api,
    stop_server,
)
from services.core.db import make_engine

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
CORRIDORS = 20
INCIDENTS = 2_000
DAYS_BACK = 120  # the slider's past day
DRAW_TIMEOUT_MS = 300_000


def api_round(server: Server, key: str, as_of: datetime | None) -> float:
    """Seconds for the requests of one drawing (now, or as of a past time), one after another."""
    headers = {"Authorization": f"Bearer {key}"}
    until = as_of or datetime.now(UTC)
    with httpx.Client(base_url=server.base, headers=headers, timeout=300.0) as client:
        started = time.perf_counter()
        sites = _all(client, "/v1/sites", "features")
        corridors = _all(client, "/v1/corridors", "features")
        if as_of is not None:  # now, the stored scores come with the sites and corridors
            targets = [{"kind": "site", "id": s["id"]} for s in sites]
            targets += [{"kind": "corridor", "id": c["id"]} for c in corridors]
            for start in range(0, len(targets), 1000):
                chunk = {"targets": targets[start : start + 1000], "times": [as_of.isoformat()]}
                client.post("/v1/backtests", json=chunk).raise_for_status()
        window = {"since": (until - timedelta(days=90)).isoformat(), "until": until.isoformat()}
        _all(client, "/v1/incidents", "features", window)
        params = {"as_of": as_of.isoformat()} if as_of else {}
        for c in corridors[:100]:
            client.get(f"/v1/corridors/{c['id']}/score", params=params).raise_for_status()
        return time.perf_counter() - started


def _all(
    client: httpx.Client, path: str, field: str, params: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = 0
    for _ in range(100):
        response = client.get(path, params={**(params or {}), "limit": 500, "after": after})
        response.raise_for_status()
        doc = response.json()
        items += doc[field]
        if doc.get("next_cursor") is None:
            break
        after = doc["next_cursor"]
    return items


def drawn(page: Page, as_of_prefix: str) -> None:
    page.wait_for_function(
        "prefix => { const m = document.querySelector('#map');"
        " return m && m.dataset.ready === 'true' && m.dataset.asOf.startsWith(prefix); }",
        arg=as_of_prefix,
        timeout=DRAW_TIMEOUT_MS,
    )


def browser_rounds(server: Server, key: str, rounds: int) -> dict[str, list[float]]:
    """Seconds from opening the map to drawn (now), and from moving the slider to redrawn."""
    opened: list[float] = []
    moved: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(rounds):
                context = browser.new_context(viewport={"width": 1366, "height": 800})
                context.add_init_script(f"sessionStorage.setItem('riskalert.apiKey', {key!r})")
                page = context.new_page()
                started = time.perf_counter()
                page.goto(f"{server.base}/dashboard/#/map")
                drawn(page, "now")
                opened.append(time.perf_counter() - started)
                started = time.perf_counter()
                page.locator("#as-of").fill(str(-DAYS_BACK))
                drawn(page, "20")
                moved.append(time.perf_counter() - started)
                context.close()
        finally:
            browser.close()
    return {"open_now_s": opened, "slider_past_s": moved}


def run(backend: str, n_sites: int, rounds: int, logs: Path) -> dict[str, Any]:
    with scratch_database(backend, keep=False, label="dash_") as db:
        log(f"{backend}, {n_sites} sites: loading")
        keys, figures = preload(db, n_sites, CORRIDORS, seed=11)
        server = start_api(db, "inline", logs)
        try:
            engine = make_engine(db.url)
            try:
                bodies = data.incidents(INCIDENTS, datetime.now(UTC), seed=5)
                bulk_ingest(server, engine, keys, bodies, batch=500)
            finally:
                engine.dispose()
            as_of = (datetime.now(UTC) - timedelta(days=DAYS_BACK)).replace(microsecond=0)
            log(f"{backend}, {n_sites} sites: API baseline")
            now = [api_round(server, keys.reader, None) for _ in range(rounds)]
            past = [api_round(server, keys.reader, as_of) for _ in range(rounds)]
            log(f"{backend}, {n_sites} sites: browser")
            browser = browser_rounds(server, keys.reader, rounds)
        finally:
            stop_server(server)
    result: dict[str, Any] = {
        "backend": backend,
        "sites": n_sites,
        "corridors": CORRIDORS,
        "incidents": INCIDENTS,
        "setup": figures,
        "api_now_s": now,
        "api_past_s": past,
        **browser,
    }
    for name, baseline in (("open_now_s", now), ("slider_past_s", past)):
        median, base = statistics.median(browser[name]), statistics.median(baseline)
        result[f"{name}_median"] = median
        result[f"{name}_api_median"] = base
        result[f"{name}_ratio_to_api"] = median / base
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--sites", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = ROOT / "benchmarks" / "results" / f"dashboard-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = [run(b, n, args.rounds, logs) for n in args.sites for b in backends]
    print(
        "| backend | sites | map opened, now: browser (API, ratio) | slider: browser (API, ratio) |"
    )
    print("|---|---:|---:|---:|")
    for r in results:
        cells = [
            f"{r[f'{name}_median']:.2f} s ({r[f'{name}_api_median']:.2f} s, "
            f"{r[f'{name}_ratio_to_api']:.1f}x)"
            for name in ("open_now_s", "slider_past_s")
        ]
        print(f"| {r['backend']} | {r['sites']:,} | {' | '.join(cells)} |")
    out = {"date": stamp, "machine": machine(), "args": vars(args), "results": results}
    (logs / "dashboard.json").write_text(json.dumps(out, indent=2))
    log(f"results and logs in {logs}")


if __name__ == "__main__":
    main()
