"""The dashboard as served: its files, headers and vendored licences (the browser tests are in
tests/scenarios/test_dashboard.py)."""

from __future__ import annotations

import re
from pathlib import Path

from services import dashboard
from tests.conftest import Api

VENDOR = dashboard.STATIC / "vendor"


def test_the_page_is_served_with_headers_that_keep_it_to_this_service(api: Api) -> None:
    page = api.client.get("/dashboard/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe" not in policy  # no inline script or style, no eval
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    home = api.client.get("/", follow_redirects=False)
    assert home.status_code in (302, 307)
    assert home.headers["location"] == "/dashboard/"
    assert "/dashboard/" not in api.client.get("/openapi.json").json()["paths"]


def test_every_file_the_page_loads_is_served_from_here(api: Api) -> None:
    html = api.client.get("/dashboard/").text
    script = api.client.get("/dashboard/app.js").text
    wanted = re.findall(r'(?:src|href)="([^"#]+)"', html)
    wanted += re.findall(r'fetch\("([^"]+)"\)', script)
    assert {"vendor/leaflet/leaflet.js", "app.js", "vendor/world-atlas/countries-50m.json"} <= set(
        wanted
    )
    for path in wanted:
        if path.startswith("/"):
            continue  # links into the API (/docs), not the page's own files
        assert not path.startswith(("http:", "https:", "//")), f"{path} comes from elsewhere"
        response = api.client.get(f"/dashboard/{path}")
        assert response.status_code == 200, path


def test_each_vendored_package_carries_its_licence_and_is_listed() -> None:
    listed = (VENDOR / "LICENSES.md").read_text()
    packages = [p for p in VENDOR.iterdir() if p.is_dir()]
    assert {p.name for p in packages} == {"leaflet", "uplot", "topojson", "world-atlas"}
    for package in packages:
        assert (package / "LICENSE").is_file(), package.name
        assert f"`{package.name}/`" in listed, package.name
    assert "Natural Earth" in listed
    assert "public domain" in listed


def test_the_page_is_in_the_package_data() -> None:
    # pyproject's package-data must ship what the page loads (the wheel, not just a checkout).
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    patterns = re.search(r'"services\.dashboard" = \[(.*?)\]', pyproject)
    assert patterns is not None
    globs = re.findall(r'"([^"]+)"', patterns.group(1))
    shipped = {p for g in globs for p in dashboard.STATIC.parent.glob(g) if p.is_file()}
    needed = {p for p in dashboard.STATIC.rglob("*") if p.is_file()}
    assert needed <= shipped, sorted(str(p) for p in needed - shipped)
