"""The web page of `gantryd serve` (docs/serve.md, "Web page"):

- `GET /`: the projects, as links;
- `GET /projects/<project>[?history=N]`: per component its desired version, status and
  progress, a table of every host (machine, version, status, since, error) and the last N
  revisions (default 10);
- `GET /ui/projects/<project>[?history=N]`: `{"project", "at", "html"}`, the same tables
  rendered now, which page/page.js polls about once a second to update the page in place;
- `GET /ui/page.css`, `/ui/page.js`: the page's own assets (nothing is loaded from
  elsewhere: the Content-Security-Policy says so to the browser too).

Server-rendered (render.py): the page reads as plain tables without JavaScript.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

from .. import revisions
from ..store import Store, now_iso
from . import render, state
from .app import HttpError, Reply, Req, Routes, ServeContext, _call, json_reply

HISTORY, MAX_HISTORY = 10, 100
ASSETS = {"page.css": "text/css; charset=utf-8", "page.js": "text/javascript; charset=utf-8"}
HTML = "text/html; charset=utf-8"
HOME = '<a href="/">All projects</a>'
# Only this server's own script, style and polling; no frames, forms or plugins.
SECURITY = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def register(routes: Routes, ctx: ServeContext) -> None:
    """Add this module's routes."""
    routes.add("GET", "/", html_page(index))
    routes.add("GET", "/projects/{project}", html_page(project_page))
    routes.add("GET", "/ui/projects/{project}", project_live)
    routes.add("GET", "/ui/{asset}", asset)


def html_page(build: Callable[[ServeContext, Req], str]) -> Callable[[ServeContext, Req], Reply]:
    """A handler answering HTML, its failures included: the API's error answer (app.py
    maps every failure to a status and message) becomes a page saying what went wrong."""
    def handler(ctx: ServeContext, req: Req) -> Reply:
        reply = _call(lambda c, r: Reply(200, build(c, r).encode(), HTML), ctx, req)
        if reply.status != 200:
            message = json.loads(reply.body).get("error", "")
            reply = Reply(reply.status, error_page(reply.status, message).encode(), HTML)
        reply.headers.update(SECURITY)
        return reply
    return handler


def error_page(status: int, message: str) -> str:
    return render.document(f"gantryd: error {status}", f"Error {status}",
                           f'<p class="error">{render.esc(message)}</p>', now_iso(),
                           crumbs=HOME)


def index(ctx: ServeContext, req: Req) -> str:
    return render.document("gantryd: projects", "Projects",
                           render.index_body(state.projects(ctx.etcd, ctx.prefix)), now_iso())


def project_page(ctx: ServeContext, req: Req) -> str:
    project = req.params["project"]
    limit = history_limit(req)
    body = render.project_body(project_view(ctx.store(project), limit))
    live = "/ui" + render.project_href(project)  # project_live
    if limit != HISTORY:
        live += f"?history={limit}"
    return render.document(f"gantryd: {project}", f"Project {render.esc(project)}", body,
                           now_iso(), crumbs=HOME, live=live)


def project_live(ctx: ServeContext, req: Req) -> Reply:
    project = req.params["project"]
    view = project_view(ctx.store(project), history_limit(req))
    reply = json_reply({"project": project, "at": now_iso(), "html": render.project_body(view)})
    reply.headers.update(SECURITY)
    return reply


def asset(ctx: ServeContext, req: Req) -> Reply:
    name = req.params["asset"]
    if name not in ASSETS:
        raise HttpError(404, f"no such asset: {name}")
    data = resources.files("gantryd.serve").joinpath("page", name).read_bytes()
    return Reply(200, data, ASSETS[name], dict(SECURITY))


def history_limit(req: Req) -> int:
    text = req.query.get("history", str(HISTORY))
    if not re.fullmatch(r"[0-9]{1,3}", text) or not 1 <= int(text) <= MAX_HISTORY:
        raise HttpError(400, f"history must be a number of revisions from 1 to {MAX_HISTORY}, "
                             f"not {text!r}")
    return int(text)


def project_view(store: Store, limit: int) -> dict[str, Any]:
    """state.project_state plus each component's last `limit` history rows."""
    view = state.project_state(store)
    names = [comp["name"] for comp in view["components"]]
    rows = revisions.report(store, names, limit)["components"]
    for comp in view["components"]:
        comp["history"] = rows[comp["name"]]
    return view
