"""The dashboard in a real headless browser: Playwright driving Debian's chromium (no browser
download; `make browser` installs it) against the real app over HTTP (uvicorn on a loopback
port, a real embedded Redis), on a data root holding a tier report written by ReportStore.

It logs in through the form, loads every page, reads the charts' options back from ECharts
and compares them with the report's numbers (suppressed and rounded by the documented rule),
checks the "<10" cells, the zh labels, the rule panel of a clicked matrix cell, the what-if
form, the 403 page, /docs and /redoc, that no console or page error happened and that the
browser asked no other host for anything; screenshots land in test-artifacts/dashboard/.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi import FastAPI, Request

from api.app import create_app
from strata.io.redis_server import free_port
from strata.reports.model import TiersReport
from strata.reports.suppress import pct, round_half_up, suppress_group
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings
from tests.dashboard_report import EXPERIMENTS, RULES, WHATIF_KEYS, WHATIF_RESULT, write_report

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
VIEW_KEY, VIEW_REC = new_key("viewer", ["reports:read"])
SEG_KEY, SEG_REC = new_key("lookups", ["segments:read"])
K = 10
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "no chromium on PATH: run `make browser` (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _fixture_routes(app: FastAPI) -> list[Any]:
    """JSON fixtures (tests/dashboard_report.py) in front of the endpoints the real-time and
    what-if pages read, so the test knows every number they must show (the endpoints
    themselves are tested by their own parts); returns the list the fixture POST
    /v1/whatif appends the bodies it receives to."""
    answers: dict[tuple[str, str], Any] = {
        ("GET", "/v1/reports/rules"): RULES,
        ("GET", "/v1/reports/experiments"): EXPERIMENTS,
        ("GET", "/v1/whatif/keys"): WHATIF_KEYS,
        ("POST", "/v1/whatif"): WHATIF_RESULT,
    }
    posted: list[Any] = []

    def endpoint(method: str, doc: Any) -> Any:
        async def answer(request: Request) -> Any:
            if method == "POST":
                posted.append(await request.json())
            return doc

        return answer

    for (method, path), doc in answers.items():
        app.add_api_route(path, endpoint(method, doc), methods=[method], include_in_schema=False)
        app.router.routes.insert(0, app.router.routes.pop())  # before the real one, if any
    return posted


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Iterator[Any]:
    data = tmp_path_factory.mktemp("dash") / "data"
    report = write_report(data)
    settings = Settings(
        data=str(data),
        redis_url=redis_server.url,
        api_keys=dump_records([VIEW_REC, SEG_REC]),
    )
    app = create_app(settings)
    posted = _fixture_routes(app)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield {
            "base": f"http://127.0.0.1:{port}",
            "report": report,
            "posted": posted,
        }
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class Browser:
    """One browser context that blocks (and records) every request to another host and
    records console errors and page errors."""

    def __init__(self, pw: Any, base: str) -> None:
        self.base = base
        self.browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        self.context = self.browser.new_context(viewport=DESKTOP, locale="en-US")
        self.external: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on(
            "console",
            lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None,
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def _route(self, route: Any) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            self.external.append(route.request.url)
            route.abort()

    def goto(self, path: str) -> Any:
        response = self.page.goto(self.base + path, wait_until="load")
        self.page.wait_for_load_state("networkidle")
        return response

    def option(self, chart_id: str) -> dict[str, Any]:
        """The ECharts option of the chart in ``#chart_id``, as the page drew it."""
        return self.page.evaluate(
            "id => JSON.parse(JSON.stringify("
            "echarts.getInstanceByDom(document.getElementById(id)).getOption()))",
            chart_id,
        )

    def series(self, chart_id: str) -> dict[str, list[Any]]:
        return {s["id"]: s["data"] for s in self.option(chart_id)["series"]}

    def take_errors(self) -> list[str]:
        """The errors recorded so far (then forgotten)."""
        out, self.errors[:] = list(self.errors), []
        return out

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()
        self.browser.close()


@pytest.fixture(scope="module")
def browser(served: Any) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = Browser(pw, served["base"])
        try:
            yield b
        finally:
            b.close()


def _shown(report: TiersReport) -> list[dict[str, int | None]]:
    """Users per tier as shown: under K suppressed, plus the secondary suppression of the
    smallest other tier where one suppressed tier would follow from the total."""
    return [suppress_group({t: m.users for t, m in s.tiers.items()}, K) for s in report.snapshots]


def _shares(report: TiersReport, tier: str) -> list[float | None]:
    shown = _shown(report)
    return [
        None if shown[i][tier] is None else pct(s.tiers[tier].share)
        for i, s in enumerate(report.snapshots)
    ]


def test_dashboard_pages_in_a_browser(browser: Browser, served: Any) -> None:
    report: TiersReport = served["report"]
    page = browser.page

    # no key: the login form; a wrong key is refused; the viewer key lands on the page asked
    browser.goto("/dashboard/metrics")
    assert urlsplit(page.url).path == "/dashboard/login"
    page.fill("#key", "stk_wrong")
    page.click("button[type=submit]")
    assert "unknown or revoked" in page.inner_text("#login-error")
    # the browser logs the 401 answer itself; nothing else may be logged
    assert [e for e in browser.take_errors() if "401 (Unauthorized)" not in e] == []
    page.fill("#key", VIEW_KEY)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert urlsplit(page.url).path == "/dashboard/metrics"
    cookie = next(c for c in browser.context.cookies() if c["name"] == "strata_dashboard_key")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # tier shares: the stacked area plots the report's shares (in %, rounded, "<10" gaps)
    browser.goto("/dashboard")
    series = browser.series("chart-tier-shares")
    for tier in report.tier_order:
        assert series[f"tier:{tier}"] == _shares(report, tier), tier
    assert series["tier:churn_warning"][0] is None  # 7 users
    assert series["tier:high_value"][0] is None  # else 7 = total - the others
    assert series["hidden"][0] == 12.7  # the hidden tiers pooled: (120 + 7) / 1000
    row = page.locator(f"#table-tiers tr[data-version='{report.snapshots[0].version}']")
    assert row.locator("td[data-tier=churn_warning]").inner_text().startswith("<10")
    assert row.locator("td[data-tier=ordinary]").inner_text() == "533 (53.3%)"
    stages = browser.series("chart-stage-shares")
    s0 = report.snapshots[0]
    assert stages["stage:mature"][0] == pct(s0.lifecycle["mature"] / s0.users)
    assert stages["stage:churned"] == [None] * len(report.snapshots)  # 5 users
    browser.shot("tiers-desktop")

    # transitions: the heat map holds the matrix, a clicked cell shows the rules that moved it
    browser.goto("/dashboard/transitions")
    tr = report.transitions[-1]
    cells = browser.series("chart-transitions")["matrix"]
    order = report.tier_order
    got = {(order[c["value"][1]], order[c["value"][0]]): c["value"][2] for c in cells}
    for f, row_ in tr.matrix.items():
        for t, n in row_.items():
            assert got[(f, t)] == (None if 0 < n < K else n), (f, t)
    hidden_cells = browser.series("chart-transitions")["hidden"]
    assert [order.index("potential"), order.index("high_value")] in hidden_cells  # 8 users
    x, y = order.index("potential"), order.index("ordinary")
    px = page.evaluate(
        "([x, y]) => echarts.getInstanceByDom(document.getElementById('chart-transitions'))"
        ".convertToPixel({seriesIndex: 0}, [x, y])",
        [x, y],
    )
    box = page.locator("#chart-transitions").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + px[0], box["y"] + px[1])
    page.wait_for_selector("#rules-panel:not([hidden])")
    rules = page.inner_text("#rules-list")
    assert f"Score band: {tr.by_rule['ordinary']['potential']['score_band']}" in rules
    assert "Hysteresis hold: 14" in rules
    cell = page.locator("#table-transitions td[data-from=high_value][data-to=potential]")
    assert cell.inner_text().startswith("<10")
    browser.shot("transitions-desktop")
    first = report.transitions[0]
    browser.goto(f"/dashboard/transitions?from={first.from_version}&to={first.to_version}")
    cells = browser.series("chart-transitions")["matrix"]
    assert any(c["value"][2] == first.matrix["ordinary"]["potential"] for c in cells)

    # value per tier: ARPU, LTV, orders, coupon cost; users per band with "<10"
    browser.goto("/dashboard/metrics")
    shown = _shown(report)
    for metric, decimals in (
        ("arpu_cny", 2),
        ("ltv_cny", 2),
        ("orders_per_user", 2),
        ("coupon_cost_cny", 2),
    ):
        series = browser.series(f"chart-{metric}")
        for tier in order:
            want = [
                None
                if shown[i][tier] is None
                else round_half_up(getattr(s.tiers[tier], metric), decimals)
                for i, s in enumerate(report.snapshots)
            ]
            assert series[f"tier:{tier}"] == want, (metric, tier)
    assert browser.series("chart-arpu_cny")["tier:high_value"][1] == 11.13  # 11.125 half up
    bands = browser.series("chart-band-recency_band")["band:recency_band"]
    last = report.snapshots[-1].bands["recency_band"]
    assert bands == [600, 250, 100, None, None] == list(suppress_group(last, K).values())
    assert page.locator("table.bands td[data-band=no_order]").inner_text() == "<10"
    assert "<10" in page.inner_text("#table-strategies")  # win_back reach 6
    browser.shot("metrics-desktop")

    # real-time rules and experiments
    browser.goto("/dashboard/realtime")
    assert browser.series("chart-rules") == {"fired": [240, None], "converted": [57, None]}
    assert "4,321.01" in page.inner_text("#table-rules tr[data-rule=cart_abandon]")
    text = page.inner_text("article[data-experiment=coupon_depth]")
    assert "SRM: ok" in text and "[0.123, 1.186]" in text
    assert browser.series("chart-exp-0")["effect"] == [[0.655, 0]]
    browser.shot("realtime-desktop")

    # what-if: move a slider, submit, see before/after and the moves
    browser.goto("/dashboard/whatif")
    slider = page.locator("input[name='tiers.bands.high_value.min_score']")
    slider.evaluate("el => { el.value = '0.85'; el.dispatchEvent(new Event('input')); }")
    assert page.locator("output").first.inner_text() == "0.85"
    page.click("#simulate")
    page.wait_for_selector("#chart-whatif")
    page.wait_for_load_state("networkidle")
    assert served["posted"][-1] == {"set": {"tiers.bands.high_value.min_score": 0.85}}
    bars = browser.series("chart-whatif")
    assert bars["before"] == [140, 365, 455, 40] and bars["after"] == [95, 406, 459, 40]
    assert "<10" in page.inner_text("#table-moves")  # potential -> ordinary: 4
    assert "-123.46" in page.inner_text("#cost-change")
    browser.shot("whatif-desktop")

    # Chinese labels, and the phone layout
    browser.goto("/dashboard?lang=zh")
    assert page.get_attribute("html", "lang") == "zh-CN"
    names = [s["name"] for s in browser.option("chart-tier-shares")["series"]]
    assert names[:2] == ["高价值", "潜力"]
    assert "分层占比" in page.inner_text("nav")
    browser.shot("tiers-zh-desktop")
    page.set_viewport_size(PHONE)
    browser.goto("/dashboard/transitions?lang=zh")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"] + 1, f"the page scrolls sideways on a phone ({width}px)"
    browser.shot("transitions-zh-phone")
    browser.goto("/dashboard")
    browser.shot("tiers-phone")
    page.set_viewport_size(DESKTOP)

    # /docs and /redoc render from the installed assets, without internet
    browser.goto("/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
    assert "strata segments API" in page.inner_text(".swagger-ui .info .title")
    assert page.locator(".opblock").count() > 5
    browser.shot("docs")
    browser.goto("/redoc")
    page.wait_for_selector("h1", timeout=15_000)
    assert "strata segments API" in page.inner_text("h1")
    browser.shot("redoc")

    # logout forgets the key
    browser.goto("/dashboard")
    page.click("#logout")
    page.wait_for_load_state("networkidle")
    assert urlsplit(page.url).path == "/dashboard/login"
    browser.goto("/dashboard")
    assert urlsplit(page.url).path == "/dashboard/login"

    # a key without reports:read gets the 403 page, and no cookie
    page.fill("#key", SEG_KEY)
    response_status = []
    page.on(
        "response",
        lambda r: response_status.append(r.status) if r.request.method == "POST" else None,
    )
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert 403 in response_status
    assert "lacks scope 'reports:read'" in page.inner_text("#message")
    assert not [c for c in browser.context.cookies() if c["name"] == "strata_dashboard_key"]
    assert [e for e in browser.take_errors() if "403 (Forbidden)" not in e] == []

    assert browser.external == [], f"the pages asked other hosts: {browser.external}"
    assert browser.errors == [], browser.errors
