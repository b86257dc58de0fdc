"""The JSON API of `gantryd serve` (docs/serve.md, "Status API", "Writes", "wait_for"):

```
GET  /v1/projects                                        project names
GET  /v1/projects/<p>                                    desired state, hosts, slots, halt
GET  /v1/projects/<p>/components/<c>                     one component of that
GET  /v1/projects/<p>/history[?n=N]                      `gantryd history --json`
GET  /v1/projects/<p>/components/<c>/history[?n=N]       the same for one component
GET  /v1/wait_for?project=&component=[&revision=][&timeout=]   200 done, 409 failed, 504
POST /v1/projects/<p>/update    {"components": [...], "tag"?, "actor"?}      bearer token
POST /v1/projects/<p>/rollback  {"components": [...], "to"?, "actor"?}       bearer token
```
Writes go through gantryd/deploy.py, the code path of `gantryd update` and `rollback`. A
write is authorised before anything else is read, and every refusal (401, 403, 400, 404,
409) writes nothing.
"""
from __future__ import annotations

import math
import re
from typing import Any

from gantry.config import Config, ConfigError
from gantry.errors import ImageError

from .. import deploy, revisions
from .. import history as H
from ..keys import check_segment
from ..store import Desired, Store
from . import state, wait
from .app import HttpError, Reply, Req, Routes, ServeContext, json_reply

WAIT_DEFAULT = 60.0  # seconds, when wait_for has no timeout=
WAIT_MAX = 900.0  # a longer wait is refused (400): a CI step should fail, not hang
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # Docker's tag grammar
_ACTOR = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,99}$")  # printable ASCII, 100 at most


def register(routes: Routes, ctx: ServeContext) -> None:
    """Add this module's routes."""
    routes.add("GET", "/v1/projects", list_projects)
    routes.add("GET", "/v1/projects/{project}", get_project)
    routes.add("GET", "/v1/projects/{project}/components/{component}", get_component)
    routes.add("GET", "/v1/projects/{project}/history", get_history)
    routes.add("GET", "/v1/projects/{project}/components/{component}/history", get_history)
    routes.add("GET", "/v1/wait_for", wait_for)
    routes.add("POST", "/v1/projects/{project}/update", post_update)
    routes.add("POST", "/v1/projects/{project}/rollback", post_rollback)


# -- reading the request ---------------------------------------------------------------------

def _query(req: Req, known: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, refusing unknown ones (a typo would silently mean a default)."""
    for name in req.query:
        if name not in known:
            raise HttpError(400, f"unknown query parameter {name!r} (known: "
                                 f"{', '.join(known) or 'none'})")
    return req.query


def _integer(value: Any, what: str, minimum: int = 1) -> int:
    """A JSON integer or a query string's digits, at least `minimum` (400 naming `what`)."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,18}", value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise HttpError(400, f"{what} must be an integer >= {minimum}, not {value!r:.80}")
    return value


def _seconds(text: str | None) -> float:
    """wait_for's timeout=: seconds from 0 to WAIT_MAX (default WAIT_DEFAULT)."""
    if text is None:
        return WAIT_DEFAULT
    value = float(text) if re.fullmatch(r"[0-9]{1,6}(\.[0-9]{0,6})?", text) else math.nan
    if not 0 <= value <= WAIT_MAX:
        raise HttpError(400, f"timeout must be a number of seconds from 0 to {WAIT_MAX:g}, "
                             f"not {text!r:.80}")
    return value


def _fields(req: Req, known: tuple[str, ...]) -> dict[str, Any]:
    """The body's JSON object, refusing fields other than `known`."""
    body = req.json_object()
    for name in body:
        if name not in known:
            raise HttpError(400, f"unknown field {name!r:.80} (known: {', '.join(known)})")
    return body


def _config(ctx: ServeContext, project: str) -> tuple[Store, Config]:
    """The project's store and config (404: a bad name, or no config stored)."""
    store = ctx.store(project)
    config = store.config()
    if config is None:
        raise HttpError(404, f"no such project {project!r} (no configuration stored)")
    return store, config


def _component(store: Store, config: Config, name: Any, what: str = "component") -> str:
    """A component of the project's config (one with a desired state left over from an
    earlier config counts too: its history and rollouts are still there); 404 otherwise."""
    if not isinstance(name, str):
        raise HttpError(400, f"{what} must be a component name (a string), not {name!r:.80}")
    try:
        check_segment("component", name)
        config.component(name)
    except ValueError as exc:
        raise HttpError(404, str(exc)) from None
    except ConfigError as exc:
        if store.desired(name) is None:
            why = exc.errors[0].message if exc.errors else str(exc)
            raise HttpError(404, f"project {store.project}: {why}") from None
    return name


def _components(store: Store, config: Config, value: Any) -> list[str]:
    """A write's `components`: a non-empty list of known components, without repeats."""
    if value is None:
        raise HttpError(400, "components: required (a list of component names)")
    if not isinstance(value, list) or not value:
        raise HttpError(400, f"components must be a non-empty list of component names, "
                             f"not {value!r:.80}")
    names = [_component(store, config, v, f"components[{i}]") for i, v in enumerate(value)]
    if len(set(names)) != len(names):
        raise HttpError(400, "components: a component is named twice")
    return names


def _actor(req: Req, value: Any) -> str:
    """Who the history records: `api@<client address>`, after the caller's own name."""
    where = f"api@{req.client or '?'}"
    if value is None:
        return where
    if not isinstance(value, str) or not _ACTOR.match(value):
        raise HttpError(400, "actor must be printable ASCII text of 1 to 100 characters")
    return f"{value} via {where}"


# -- status ----------------------------------------------------------------------------------

def list_projects(ctx: ServeContext, req: Req) -> Reply:
    _query(req, ())
    return json_reply({"projects": state.projects(ctx.etcd, ctx.prefix)})


def get_project(ctx: ServeContext, req: Req) -> Reply:
    _query(req, ())
    store, _ = _config(ctx, req.params["project"])
    return json_reply(state.project_state(store))


def get_component(ctx: ServeContext, req: Req) -> Reply:
    _query(req, ())
    store, config = _config(ctx, req.params["project"])
    name = _component(store, config, req.params["component"])
    return json_reply({"project": store.project, **state.component_doc(store, name)})


def get_history(ctx: ServeContext, req: Req) -> Reply:
    query = _query(req, ("n",))
    limit = _integer(query["n"], "n") if "n" in query else None
    store, config = _config(ctx, req.params["project"])
    one = req.params.get("component")
    names = [_component(store, config, one)] if one else list(config.names)
    return json_reply({"project": store.project,
                       **revisions.report(store, names, limit, only=one is not None)})


def wait_for(ctx: ServeContext, req: Req) -> Reply:
    query = _query(req, ("project", "component", "revision", "timeout"))
    for name in ("project", "component"):
        if not query.get(name):
            raise HttpError(400, f"{name}= is required")
    revision = _integer(query["revision"], "revision") if "revision" in query else None
    timeout = _seconds(query.get("timeout"))
    store, config = _config(ctx, query["project"])
    name = _component(store, config, query["component"])
    outcome = wait.wait_for(store, name, revision, timeout, req.gone, ctx.stopping)
    return json_reply(outcome.doc, outcome.status)


# -- writes ----------------------------------------------------------------------------------

def _written(store: Store, written: deploy.Written) -> dict[str, Any]:
    def one(name: str, d: Desired) -> dict[str, Any]:
        return {"revision": d.revision, "image": d.image, "cause": d.cause, "actor": d.actor,
                "source": d.source, "waitFor": f"/v1/wait_for?project={store.project}"
                                              f"&component={name}&revision={d.revision}"}
    return {"project": store.project,
            "components": {n: one(n, d) for n, d in written.desired.items()},
            "warnings": written.warnings}


def post_update(ctx: ServeContext, req: Req) -> Reply:
    ctx.require_token(req)
    body = _fields(req, ("components", "tag", "actor"))
    store, config = _config(ctx, req.params["project"])
    names = _components(store, config, body.get("components"))
    tag = body.get("tag")
    if tag is not None and not (isinstance(tag, str) and _TAG.match(tag)):
        raise HttpError(400, f"tag must be a Docker image tag ([A-Za-z0-9_][A-Za-z0-9_.-]*, "
                             f"128 at most), not {tag!r:.80}")
    actor = _actor(req, body.get("actor"))
    try:
        written = deploy.update(store, names, docker_url=ctx.docker_url, tag=tag,
                                cause=H.UPDATE, actor=actor)
    except ImageError as exc:  # an unknown tag, or a registry that cannot be asked
        raise HttpError(409, f"{exc}; nothing written") from None
    return json_reply(_written(store, written))


def post_rollback(ctx: ServeContext, req: Req) -> Reply:
    ctx.require_token(req)
    body = _fields(req, ("components", "to", "actor"))
    store, config = _config(ctx, req.params["project"])
    names = _components(store, config, body.get("components"))
    to = _integer(body["to"], "to") if body.get("to") is not None else None
    if to is not None and len(names) > 1:
        raise HttpError(400, "to: goes with one component")
    actor = _actor(req, body.get("actor"))
    written = deploy.rollback(store, names, to=to, docker_url=ctx.docker_url,
                              cause=H.ROLLBACK, actor=actor)
    return json_reply(_written(store, written))
