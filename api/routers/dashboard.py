"""The browser dashboard: ``GET /dashboard`` and its pages, server-rendered (Jinja2) from the
latest tier report (:class:`strata.io.reports.ReportStore` under the settings' data root),
charts drawn in the browser by the vendored Apache ECharts (``/dashboard/static/``).

Access needs a key with scope ``reports:read``: the login form (``POST /dashboard/login``)
keeps it in an HttpOnly, SameSite=Strict cookie (Secure over https), or a client sends it as
``Authorization: Bearer``. Every count shown goes through :mod:`strata.reports.suppress`
(cells under ``dashboard.min_cell_users`` users are shown as ``"<k"``). The real-time
rules, experiments and what-if pages read the API's own JSON endpoints in process, with the
viewer's key, so they show exactly what those endpoints answer (or "not available").
"""

from __future__ import annotations

import json
import logging
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from api.deps import ApiState, State
from strata.experiments.analysis import SRM_P_THRESHOLD
from strata.io.reports import ReportStore
from strata.io.warehouse import WarehouseError
from strata.reports.labels import Lang, labels, pick_lang
from strata.reports.model import TiersReport
from strata.reports.suppress import (
    DECIMALS,
    is_hidden,
    suppress_experiment,
    suppress_rules,
    suppress_tiers_report,
    suppress_whatif,
)
from strata.serving.apikeys import KeyRecord, Scope

log = logging.getLogger("strata.api")

router = APIRouter(prefix="/dashboard", include_in_schema=False)

HERE = Path(__file__).resolve().parent.parent / "dashboard"
STATIC_DIR = HERE / "static"
COOKIE = "strata_dashboard_key"
#: pages: (path, nav label key)
PAGES: tuple[tuple[str, str], ...] = (
    ("/dashboard", "nav_tiers"),
    ("/dashboard/transitions", "nav_transitions"),
    ("/dashboard/metrics", "nav_metrics"),
    ("/dashboard/realtime", "nav_realtime"),
    ("/dashboard/whatif", "nav_whatif"),
)
_SECURITY_HEADERS = {
    # no inline script and nothing from another origin: charts come from /dashboard/static
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
_REPORT_CHECK_S = 1.0

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
)


def _fmt(value: Any, decimals: int = 0) -> str:
    """A display figure: ``"<k"`` as is, ``–`` for none, else the number (already rounded)."""
    if value is None:
        return "–"
    if is_hidden(value):
        return str(value)
    if isinstance(value, bool):
        return "✓" if value else "–"
    if isinstance(value, int) and decimals == 0:
        return f"{value:,}"
    return f"{float(value):,.{decimals}f}"


_env.filters["fmt"] = _fmt
_env.tests["hidden"] = is_hidden


@dataclass
class _Reports:
    """The latest report of a data root, re-read when a newer one appears (checked once a
    second at most)."""

    store: ReportStore
    version: str | None = None
    report: TiersReport | None = None
    checked: float = 0.0

    def latest(self) -> TiersReport | None:
        now = time.monotonic()
        if self.checked and now - self.checked < _REPORT_CHECK_S:
            return self.report
        self.checked = now
        versions = self.store.versions()
        newest = versions[-1] if versions else None
        if newest != self.version:
            self.report = self.store.read(newest) if newest is not None else None
            self.version = newest
        return self.report


def _reports(request: Request, state: ApiState) -> _Reports:
    cache: _Reports | None = getattr(request.app.state, "dashboard_reports", None)
    if cache is None:
        cache = _Reports(ReportStore(state.settings.data))
        request.app.state.dashboard_reports = cache
    return cache


# ---------------------------------------------------------------- rendering and access


def _lang(request: Request) -> Lang:
    return pick_lang(request.query_params.get("lang"), request.headers.get("accept-language"))


def _with_lang(request: Request, lang: Lang) -> str:
    """This page's URL with ``lang`` switched (other query parameters kept)."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"]
    return f"{request.url.path}?{urlencode([*params, ('lang', lang)])}"


def _script_json(doc: dict[str, Any]) -> Markup:
    """``doc`` as JSON safe inside ``<script type="application/json">`` (no ``<``, ``>``,
    ``&`` that could end the element)."""
    text = json.dumps(doc, ensure_ascii=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _render(
    request: Request,
    template: str,
    *,
    page: str = "",
    status: int = 200,
    data: dict[str, Any] | None = None,
    viewer: KeyRecord | None = None,
    **context: Any,
) -> HTMLResponse:
    state: ApiState = request.app.state.strata
    lang = _lang(request)
    k = state.config.dashboard.min_cell_users
    words = labels(lang)
    html = _env.get_template(template).render(
        lang=lang,
        L=words,
        k=k,
        page=page,
        pages=PAGES,
        viewer=viewer,
        lang_switch=_with_lang(request, "zh" if lang == "en" else "en"),
        q=f"?lang={lang}",
        data=_script_json({"page": page, "lang": lang, "k": k, "labels": words, **(data or {})}),
        decimals=DECIMALS,
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.cookies.get(COOKIE) or None


def _login_redirect(request: Request, *, clear: bool = False) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(f"/dashboard/login?{urlencode({'next': target})}", 303)
    if clear:
        response.delete_cookie(COOKIE, path="/dashboard")
    return response


def _forbidden(request: Request, record: KeyRecord) -> HTMLResponse:
    return _render(
        request,
        "message.html",
        status=403,
        title_key="forbidden",
        message=f"key {record.name!r} lacks scope {Scope.REPORTS_READ.value!r}: "
        f"create one with `strata keys create --scope {Scope.REPORTS_READ.value}`",
    )


def _viewer(request: Request, state: ApiState) -> tuple[KeyRecord, str] | Response:
    """The viewer's key record and key, or the response to send instead (the login form
    without a key, the 403 page without the scope)."""
    key = _presented_key(request)
    if key is None:
        return _login_redirect(request)
    record = state.keyring().authenticate(key)
    if record is None:
        return _login_redirect(request, clear=True)
    if not record.allows(Scope.REPORTS_READ):
        return _forbidden(request, record)
    return record, key


def _same_origin(request: Request) -> bool:
    """A browser POST from another site is refused (SameSite=Strict already keeps the cookie
    off it; this also covers a form that sends a key)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _safe_next(target: str | None) -> str:
    if not target or not target.startswith("/dashboard") or target.startswith("//"):
        return "/dashboard"
    return target


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the only kind the pages post)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return dict(parse_qsl(body, keep_blank_values=True))


# ---------------------------------------------------------------- the API, in process


async def _api(
    request: Request, method: str, path: str, key: str, body: Any = None
) -> tuple[int, Any]:
    """Call one of this app's own JSON endpoints with the viewer's key (same scopes, same
    answer as over HTTP); ``(status, JSON or None)``."""
    payload = b"" if body is None else json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"dashboard.internal"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ],
        "client": ("127.0.0.1", 0),
        "server": ("dashboard.internal", 80),
    }
    sent = False
    status = 500
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await request.app(scope, receive, send)
    try:
        return status, json.loads(b"".join(chunks) or b"null")
    except ValueError:
        return status, None


def _unavailable(status: int, doc: Any) -> str | None:
    """Why an endpoint's answer cannot be shown ("" when this server has no such endpoint),
    or None when it can."""
    if status == 200:
        return None
    if status != 404 and isinstance(doc, dict) and isinstance(doc.get("detail"), str):
        return f"{status}: {doc['detail']}"
    return ""


# ---------------------------------------------------------------- pages


def _pick_transition(view: dict[str, Any], wanted: tuple[str | None, str | None]) -> int | None:
    """Index of the transition ``wanted`` = (from, to) in the view; the newest when none is
    asked for; None when the asked pair is not in the report (or there are none)."""
    transitions = view["transitions"]
    if not transitions:
        return None
    if wanted == (None, None):
        return len(transitions) - 1
    for i, tr in enumerate(transitions):
        if (tr["from_version"], tr["to_version"]) == wanted:
            return i
    return None


async def _report_page(
    request: Request,
    state: ApiState,
    template: str,
    page: str,
    wanted: tuple[str | None, str | None] = (None, None),
) -> Response:
    who = _viewer(request, state)
    if isinstance(who, Response):
        return who
    record, _ = who
    try:
        report = await run_in_threadpool(_reports(request, state).latest)
    except WarehouseError as exc:
        log.warning("dashboard: %s", exc)
        return _render(request, "message.html", status=500, title_key="no_report", message=str(exc))
    if report is None:
        return _render(
            request,
            "message.html",
            page=page,
            viewer=record,
            title_key="no_report",
            message=f"no report yet: run strata report tiers --data {state.settings.data}",
        )
    view = suppress_tiers_report(report.model_dump(), state.config.dashboard.min_cell_users)
    chosen = _pick_transition(view, wanted)
    return _render(
        request,
        template,
        page=page,
        viewer=record,
        view=view,
        chosen=chosen,
        wanted=wanted,
        data={"view": view, "chosen": chosen},
    )


@router.get("", response_class=HTMLResponse)
async def tiers_page(request: Request, state: State) -> Response:
    """Tier and lifecycle shares over the report's snapshots."""
    return await _report_page(request, state, "tiers.html", "/dashboard")


@router.get("/transitions", response_class=HTMLResponse)
async def transitions_page(request: Request, state: State) -> Response:
    """The movement matrix between two snapshots, with the rules that moved the users."""
    wanted = (request.query_params.get("from"), request.query_params.get("to"))
    return await _report_page(request, state, "transitions.html", "/dashboard/transitions", wanted)


@router.get("/metrics", response_class=HTMLResponse)
async def metrics_page(request: Request, state: State) -> Response:
    """ARPU, LTV, orders per user and coupon cost per tier; users per RFM base band."""
    return await _report_page(request, state, "metrics.html", "/dashboard/metrics")


@router.get("/realtime", response_class=HTMLResponse)
async def realtime_page(request: Request, state: State) -> Response:
    """The real-time rules and the experiments, from ``GET /v1/reports/rules`` and ``GET
    /v1/reports/experiments``."""
    who = _viewer(request, state)
    if isinstance(who, Response):
        return who
    record, key = who
    k = state.config.dashboard.min_cell_users
    rules_status, rules_doc = await _api(request, "GET", "/v1/reports/rules", key)
    exp_status, exp_doc = await _api(request, "GET", "/v1/reports/experiments", key)
    rules = suppress_rules(rules_doc, k) if rules_status == 200 else None
    experiments = (
        [
            suppress_experiment({"experiment": name, **doc}, k, SRM_P_THRESHOLD)
            for name, doc in sorted((exp_doc.get("experiments") or {}).items())
        ]
        if exp_status == 200 and isinstance(exp_doc, dict)
        else None
    )
    return _render(
        request,
        "realtime.html",
        page="/dashboard/realtime",
        viewer=record,
        rules=rules,
        rules_error=_unavailable(rules_status, rules_doc),
        experiments=experiments,
        experiments_error=_unavailable(exp_status, exp_doc),
        data={"rules": rules, "experiments": experiments},
    )


async def _whatif(request: Request, state: ApiState, submitted: dict[str, str] | None) -> Response:
    who = _viewer(request, state)
    if isinstance(who, Response):
        return who
    record, key = who
    k = state.config.dashboard.min_cell_users
    status, doc = await _api(request, "GET", "/v1/whatif/keys", key)
    if status != 200 or not isinstance(doc, dict):
        return _render(
            request,
            "whatif.html",
            page="/dashboard/whatif",
            viewer=record,
            keys=None,
            keys_error=_unavailable(status, doc),
            result=None,
            error=None,
        )
    keys = [dict(item) for item in doc.get("keys") or []]
    result = error = None
    if submitted is not None:
        changes: dict[str, float] = {}
        for item in keys:
            raw = submitted.get(item["key"])
            if raw is None:
                continue
            try:
                value = float(raw)
            except ValueError:
                error = f"{item['key']}: {raw!r} is not a number"
                break
            item["chosen"] = value
            if item.get("value") is None or value != float(item["value"]):
                changes[item["key"]] = value
        if error is None:
            status, answer = await _api(request, "POST", "/v1/whatif", key, {"set": changes})
            if status == 200 and isinstance(answer, dict):
                result = suppress_whatif(answer, k)
            else:
                detail = answer.get("detail") if isinstance(answer, dict) else None
                error = detail if isinstance(detail, str) else f"what-if failed ({status})"
    return _render(
        request,
        "whatif.html",
        page="/dashboard/whatif",
        viewer=record,
        keys=keys,
        keys_error=None,
        result=result,
        error=error,
        data={"whatif": result},
    )


@router.get("/whatif", response_class=HTMLResponse)
async def whatif_page(request: Request, state: State) -> Response:
    """The what-if form: a slider per threshold and weight of ``GET /v1/whatif/keys``."""
    return await _whatif(request, state, None)


@router.post("/whatif", response_class=HTMLResponse)
async def whatif_submit(request: Request, state: State) -> Response:
    """Simulate the form's values through ``POST /v1/whatif``; before/after and the moves."""
    if not _same_origin(request):
        return Response("cross-site form refused", 403)
    return await _whatif(request, state, await _form(request))


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> Response:
    """The login form."""
    return _render(
        request, "login.html", next=_safe_next(request.query_params.get("next")), error=None
    )


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, state: State) -> Response:
    """Check the key of the form and keep it in the dashboard cookie."""
    if not _same_origin(request):
        return Response("cross-site form refused", 403)
    form = await _form(request)
    target = _safe_next(form.get("next"))
    key = form.get("key", "").strip()
    record = state.keyring().authenticate(key) if key else None
    if record is None:
        return _render(
            request, "login.html", status=401, next=target, error="unknown or revoked API key"
        )
    if not record.allows(Scope.REPORTS_READ):
        return _forbidden(request, record)
    response = RedirectResponse(target, 303)
    response.set_cookie(
        COOKIE,
        key,
        max_age=state.config.dashboard.session_hours * 3600,
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Forget the dashboard cookie."""
    response = RedirectResponse("/dashboard/login", 303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


@router.get("/static/{name:path}")
async def static(name: str) -> Response:
    """The pages' CSS and JS and the vendored chart library (no CDN)."""
    path = (STATIC_DIR / name).resolve()
    if not path.is_relative_to(STATIC_DIR) or not path.is_file():
        return Response("not found", 404)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(
        path,
        media_type=media,
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
