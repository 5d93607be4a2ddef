"""The dashboard's routes without a browser: access (login cookie, bearer, 403), the report
pages, "no report yet", a newer report re-read, suppression in the HTML, the pages fed by
other endpoints (fixtures and "not available"), static files and the offline /docs, /redoc.

No services: the app is built but its lifespan (the Redis readers) never runs; the
dashboard reads only the report folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

import api.routers.dashboard as dashboard
from api.app import create_app
from strata.io.reports import ReportStore
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings
from tests.dashboard_report import (
    EXPERIMENTS,
    RULES,
    WHATIF_KEYS,
    WHATIF_RESULT,
    build_report,
    write_report,
)

VIEW_KEY, VIEW_REC = new_key("viewer", ["reports:read"])
SEG_KEY, SEG_REC = new_key("lookups", ["segments:read"])
ADMIN_KEY, ADMIN_REC = new_key("ops", ["admin"])


def _app(data: Path) -> FastAPI:
    settings = Settings(
        data=str(data),
        redis_url="redis://127.0.0.1:9",  # never reached: no lifespan, no lookup
        api_keys=dump_records([VIEW_REC, SEG_REC, ADMIN_REC]),
    )
    return create_app(settings)


def _client(app: FastAPI, key: str | None = VIEW_KEY, **kw: Any) -> TestClient:
    c = TestClient(app, follow_redirects=False, **kw)
    if key is not None:
        r = c.post("/dashboard/login", data={"key": key, "next": "/dashboard"})
        assert r.status_code == 303, r.text
    return c


def _data(html: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="dash-data">(.*?)</script>', html, re.S)
    assert m is not None
    return json.loads(m.group(1))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_report(root)
    return root


@pytest.fixture(autouse=True)
def _no_report_cache_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashboard, "_REPORT_CHECK_S", 0.0)


def test_no_key_redirects_to_the_login_form(data: Path) -> None:
    c = _client(_app(data), key=None)
    r = c.get("/dashboard/transitions?from=a")
    assert r.status_code == 303
    assert r.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Ftransitions%3Ffrom%3Da"
    form = c.get(r.headers["location"])
    assert form.status_code == 200 and 'name="key"' in form.text and 'type="password"' in form.text


def test_login_sets_a_strict_httponly_cookie_and_redirects_to_next(data: Path) -> None:
    c = TestClient(_app(data), follow_redirects=False)
    r = c.post("/dashboard/login", data={"key": VIEW_KEY, "next": "/dashboard/metrics"})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/metrics"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{dashboard.COOKIE}=")
    for part in ("HttpOnly", "SameSite=strict", "Path=/dashboard", "Max-Age=43200"):
        assert part in cookie
    assert "Secure" not in cookie
    assert c.get("/dashboard/metrics").status_code == 200
    # over https the cookie is Secure; a next outside the dashboard is ignored
    s = TestClient(_app(data), base_url="https://testserver", follow_redirects=False)
    r = s.post("/dashboard/login", data={"key": VIEW_KEY, "next": "//evil.example/x"})
    assert "Secure" in r.headers["set-cookie"] and r.headers["location"] == "/dashboard"


def test_bad_keys_and_keys_without_the_scope(data: Path) -> None:
    app = _app(data)
    c = TestClient(app, follow_redirects=False)
    r = c.post("/dashboard/login", data={"key": "stk_nope"})
    assert r.status_code == 401 and "unknown or revoked API key" in r.text
    assert "set-cookie" not in r.headers
    r = c.post("/dashboard/login", data={"key": SEG_KEY})
    assert r.status_code == 403 and "lacks scope &#39;reports:read&#39;" in r.text
    assert "set-cookie" not in r.headers
    assert c.get("/dashboard", headers={"Authorization": f"Bearer {SEG_KEY}"}).status_code == 403
    # the bearer header works without a cookie; admin implies reports:read
    assert c.get("/dashboard", headers={"Authorization": f"Bearer {VIEW_KEY}"}).status_code == 200
    assert c.get("/dashboard", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    # a revoked key in the cookie: back to the login form, cookie cleared
    c.cookies.set(dashboard.COOKIE, "stk_revoked", path="/dashboard")
    r = c.get("/dashboard")
    assert r.status_code == 303 and dashboard.COOKIE in r.headers.get("set-cookie", "")


def test_cross_site_posts_are_refused(data: Path) -> None:
    c = TestClient(_app(data), follow_redirects=False)
    r = c.post(
        "/dashboard/login", data={"key": VIEW_KEY}, headers={"Origin": "https://evil.example"}
    )
    assert r.status_code == 403 and "set-cookie" not in r.headers
    ok = c.post("/dashboard/login", data={"key": VIEW_KEY}, headers={"Origin": "http://testserver"})
    assert ok.status_code == 303


def test_logout_clears_the_cookie(data: Path) -> None:
    c = _client(_app(data))
    r = c.post("/dashboard/logout")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    assert f'{dashboard.COOKIE}=""' in r.headers["set-cookie"]
    assert c.get("/dashboard").status_code == 303


def test_pages_show_the_suppressed_rounded_report(data: Path) -> None:
    c = _client(_app(data))
    r = c.get("/dashboard")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp
    assert r.headers["cache-control"] == "no-store"
    html = r.text
    assert '<span class="users">533</span> <span class="share">(53.3%)</span>' in html
    assert "&lt;10" in html and ">7<" not in html  # churn_warning's 7 users never appear
    doc = _data(html)
    assert doc["k"] == 10 and doc["page"] == "/dashboard"
    assert doc["view"]["snapshots"][0]["tiers"]["churn_warning"]["users"] == "<10"
    for page in ("/dashboard/transitions", "/dashboard/metrics"):
        r = c.get(page)
        assert r.status_code == 200, page
    metrics = c.get("/dashboard/metrics").text
    assert "25.13" in metrics and "500.01" in metrics  # half up: 25.125, 500.005
    tr = c.get("/dashboard/transitions").text
    assert _data(tr)["chosen"] == 1  # the newest transition by default
    first = build_report().transitions[0]
    picked = c.get(f"/dashboard/transitions?from={first.from_version}&to={first.to_version}").text
    assert _data(picked)["chosen"] == 0
    missing = c.get("/dashboard/transitions?from=x&to=y").text
    assert 'id="no-transition"' in missing and _data(missing)["chosen"] is None


def test_languages(data: Path) -> None:
    c = _client(_app(data))
    zh = c.get("/dashboard?lang=zh").text
    assert '<html lang="zh-CN">' in zh and "高价值" in zh and "各层用户占比趋势" in zh
    assert 'href="/dashboard?lang=en"' in zh  # the switch
    by_header = c.get("/dashboard", headers={"Accept-Language": "zh-CN,zh;q=0.9"}).text
    assert "高价值" in by_header
    en = c.get("/dashboard", headers={"Accept-Language": "en-US"}).text
    assert "High value" in en and "高价值" not in en.split('id="dash-data"')[0]


def test_no_report_yet_and_a_newer_report_is_read(tmp_path: Path) -> None:
    root = tmp_path / "data"
    c = _client(_app(root))
    r = c.get("/dashboard")
    assert r.status_code == 200
    assert f"no report yet: run strata report tiers --data {root}" in r.text
    write_report(root)
    first = _data(c.get("/dashboard").text)["view"]["report_version"]
    newer = build_report()
    newer.snapshots[-1].tiers["ordinary"].users = 999
    written = ReportStore(str(root)).write(newer)
    doc = _data(c.get("/dashboard").text)["view"]
    assert doc["report_version"] == written.report_version != first
    assert doc["snapshots"][-1]["tiers"]["ordinary"]["users"] == 999


def test_a_broken_report_is_a_clear_page(tmp_path: Path) -> None:
    root = tmp_path / "data"
    written = write_report(root)
    path = Path(ReportStore(str(root)).path(written.report_version)) / "report.json"
    path.write_text("{not json")
    r = _client(_app(root)).get("/dashboard")
    assert r.status_code == 500 and "bad report document" in r.text


def _fake_api(
    monkeypatch: pytest.MonkeyPatch, answers: dict[tuple[str, str], tuple[int, Any]]
) -> list[Any]:
    """The dashboard's in-process API calls answered from ``answers`` ((method, path) ->
    (status, JSON)); 404 for anything else. Returns the bodies it was sent."""
    sent: list[Any] = []

    async def api(request: Any, method: str, path: str, key: str, body: Any = None) -> Any:
        assert key == VIEW_KEY  # the viewer's own key
        if body is not None:
            sent.append(body)
        return answers.get((method, path), (404, {"detail": "Not Found"}))

    monkeypatch.setattr(dashboard, "_api", api)
    return sent


FIXTURES: dict[tuple[str, str], tuple[int, Any]] = {
    ("GET", "/v1/reports/rules"): (200, RULES),
    ("GET", "/v1/reports/experiments"): (200, EXPERIMENTS),
    ("GET", "/v1/whatif/keys"): (200, WHATIF_KEYS),
    ("POST", "/v1/whatif"): (200, WHATIF_RESULT),
}


def test_pages_fed_by_other_endpoints_say_when_those_are_missing(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_api(monkeypatch, {})
    c = _client(_app(data))
    realtime = c.get("/dashboard/realtime").text
    assert 'id="rules-unavailable"' in realtime and 'id="experiments-unavailable"' in realtime
    whatif = c.get("/dashboard/whatif").text
    assert 'id="whatif-unavailable"' in whatif


def test_the_real_report_endpoints_are_called_with_the_viewers_key(data: Path) -> None:
    # no lifespan here, so the rules endpoint answers 503 (no live reader) and the page
    # says so; the experiments endpoint answers (no experiment in the shipped configs, or
    # an error per experiment: the warehouse is empty)
    html = _client(_app(data)).get("/dashboard/realtime").text
    assert 'id="rules-unavailable"' in html and "503: the API is starting" in html
    assert 'id="no-experiments"' in html or "experiment-error" in html


def test_realtime_page_suppresses_rules_and_shows_srm(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = {"error": "experiment 'menu_test': no exposed user in its control arm"}
    answers = {
        **FIXTURES,
        ("GET", "/v1/reports/experiments"): (
            200,
            {"experiments": {**EXPERIMENTS["experiments"], "menu_test": failing}},
        ),
    }
    _fake_api(monkeypatch, answers)
    html = _client(_app(data)).get("/dashboard/realtime").text
    assert 'id="table-rules"' in html and "4,321.01" in html
    assert "cap: &lt;10" in html  # 4 suppressions
    assert "SRM: ok" in html and "[0.123, 1.186]" in html
    assert "no exposed user in its control arm" in html
    empty = {**answers, ("GET", "/v1/reports/rules"): (200, {"rules": []})}
    _fake_api(monkeypatch, empty)
    assert 'id="no-rules"' in _client(_app(data)).get("/dashboard/realtime").text
    doc = _data(html)
    assert doc["rules"][1]["fired"] == "<10"


def test_whatif_form_posts_the_changed_values(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _fake_api(monkeypatch, FIXTURES)
    c = _client(_app(data))
    form = c.get("/dashboard/whatif").text
    assert form.count('type="range"') == 2 and 'name="tiers.weights.recency"' in form
    r = c.post(
        "/dashboard/whatif",
        data={"tiers.bands.high_value.min_score": "0.75", "tiers.weights.recency": "0.3"},
    )
    assert r.status_code == 200
    assert sent == [{"set": {"tiers.bands.high_value.min_score": 0.75}}]
    doc = _data(r.text)["whatif"]
    assert doc["after"]["high_value"] == 95 and doc["moves"]["potential"]["ordinary"] == "<10"
    assert doc["moves"]["potential"]["potential"] == "<10"  # its row adds up to a shown 365
    assert 'value="0.75"' in r.text and "-123.46" in r.text
    bad = c.post("/dashboard/whatif", data={"tiers.weights.recency": "lots"})
    assert "tiers.weights.recency: &#39;lots&#39; is not a number" in bad.text
    assert len(sent) == 1  # refused before the endpoint


def test_whatif_errors_show_the_endpoints_detail(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = (422, {"detail": "tiers.bands.nope: unknown key"})
    _fake_api(monkeypatch, {**FIXTURES, ("POST", "/v1/whatif"): refused})
    r = _client(_app(data)).post("/dashboard/whatif", data={"tiers.weights.recency": "0.5"})
    assert r.status_code == 200 and "tiers.bands.nope: unknown key" in r.text


def test_the_in_process_call_reaches_the_apps_own_endpoint(data: Path) -> None:
    # _api itself (not faked): a request through the app, with the key as a bearer header
    app = _app(data)
    seen: list[str] = []

    async def probe(request: Request) -> Any:
        seen.append(request.headers["authorization"])
        return {"ok": await request.json()}

    app.add_api_route("/v1/probe", probe, methods=["POST"])

    async def call() -> Any:
        from starlette.requests import Request as StarletteRequest

        req = StarletteRequest({"type": "http", "app": app, "headers": []})
        return await dashboard._api(req, "POST", "/v1/probe", VIEW_KEY, {"set": {"a": 1}})

    import asyncio

    assert asyncio.run(call()) == (200, {"ok": {"set": {"a": 1}}})
    assert seen == [f"Bearer {VIEW_KEY}"]


def test_static_files_and_the_vendored_chart_library(data: Path) -> None:
    c = TestClient(_app(data))
    js = c.get("/dashboard/static/vendor/echarts/echarts.min.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "Apache License" in c.get("/dashboard/static/vendor/echarts/LICENSE").text
    assert "Apache ECharts" in c.get("/dashboard/static/vendor/echarts/NOTICE").text
    assert c.get("/dashboard/static/dashboard.css").status_code == 200
    assert c.get("/dashboard/static/../routers/dashboard.py").status_code == 404
    assert c.get("/dashboard/static/%2e%2e/templates/base.html").status_code == 404
    assert c.get("/dashboard/static/nope.js").status_code == 404


def test_docs_and_redoc_load_their_assets_from_this_server(data: Path) -> None:
    c = TestClient(_app(data))
    for page in ("/docs", "/redoc"):
        html = c.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/") for a in assets), (page, assets)
        for asset in assets:
            assert c.get(asset).status_code == 200, asset
    assert "cdn.redoc.ly" not in c.get("/docs-assets/redoc.standalone.js").text
    assert '"validatorUrl": null' in c.get("/docs").text
