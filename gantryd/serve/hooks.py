"""The webhooks of `gantryd serve` (docs/serve.md, "Registry webhook", "Generic webhook").

`POST /v1/hooks/registry` (bearer token): the Docker registry's notification envelopes. Each
push of a tag rolls the pushed digest out to every component, in every project, that follows
that `repo:tag` with `"autoUpdate": true` (registry.py says what matches), through the path of
`gantryd update` (deploy.update, cause `registry`, actor `registry@<host>`), pinned to the
pushed digest: if the registry now answers another one for the tag (a later push), nothing is
written. A component already at the digest is left alone; an event id seen before is ignored
(deliveries.py), so a redelivered event or a second push of the same image writes one
revision. Answered 200 with what was done per event (a registry retries anything else, and
blocks its queue meanwhile); 503 while another request is handling the same event.

`POST /v1/hooks/generic` (HMAC-SHA256 signature of the body, GitHub's `X-Hub-Signature-256`):
`{"project", "components", "tag"?}` is `gantryd update` of those components (cause
`webhook`); a delivery id (`X-GitHub-Delivery` or `X-Delivery-Id`) seen before is ignored.

Nothing is written for a request refused by its token, signature or body; tokens, secrets and
signatures are never logged.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from gantry.config import ConfigError
from gantry.config.model import TAG, Component
from gantry.errors import GantryError

from .. import deploy
from .. import history as H
from ..store import Conflict, Store, StoreError
from . import deliveries
from . import registry as R
from .app import HttpError, Req, Reply, Routes, ServeContext, json_reply
from .state import projects

log = logging.getLogger("gantryd.serve.hooks")

DELIVERY_HEADERS = ("x-github-delivery", "x-delivery-id")
GENERIC_KEYS = ("project", "components", "tag")
MAX_DELIVERY_ID = 200


def register(routes: Routes, ctx: ServeContext) -> None:
    """Add this module's routes."""
    routes.add("POST", "/v1/hooks/registry", registry_hook)
    routes.add("POST", "/v1/hooks/generic", generic_hook)


# -- registry ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Follower:
    """A component with `autoUpdate` in a project."""

    project: str
    component: Component


def registry_hook(ctx: ServeContext, req: Req) -> Reply:
    """Handle one notification envelope; answer what was done per event."""
    ctx.require_token(req)
    try:
        events = R.events(req.json())
    except R.BadEnvelope as exc:
        raise HttpError(400, str(exc)) from None
    followers: list[Follower] | None = None  # read at the first push only
    answers = []
    for event in events:
        push = R.push_of(event)
        if isinstance(push, str):
            log.debug("registry event ignored: %s", push)
            answers.append(_ignored(event, push))
            continue
        if followers is None:
            followers = list(_followers(ctx))
        targets = [f for f in followers
                   if f.component.tag == push.tag and R.matches(f.component.repo, push)]
        if not targets:
            reason = f"no component with autoUpdate follows {push.repository}:{push.tag}"
            log.info("registry event %s (%s): ignored: %s", push.id, push, reason)
            answers.append(_ignored(event, reason, push))
            continue
        answers.append(_handle_push(ctx, push, targets))
    busy = any(a["result"] == "busy" for a in answers)
    return json_reply({"events": answers}, 503 if busy else 200)


def _followers(ctx: ServeContext) -> Iterator[Follower]:
    for project in projects(ctx.etcd, ctx.prefix):
        try:
            config = Store(ctx.etcd, project, ctx.prefix).config()
        except StoreError as exc:  # one broken project must not stop the others
            log.warning("registry hook: project %s skipped: %s", project, exc)
            continue
        for comp in config.components if config else ():
            if comp.auto_update:
                yield Follower(project, comp)


def _ignored(event: Any, reason: str, push: R.Push | None = None) -> dict[str, Any]:
    event_id = event.get("id") if isinstance(event, dict) else None
    out = {"id": event_id if isinstance(event_id, str) else None, "result": "ignored",
           "reason": reason}
    return {**out, "push": str(push)} if push else out


def _handle_push(ctx: ServeContext, push: R.Push, targets: list[Follower]) -> dict[str, Any]:
    out = {"id": push.id, "push": str(push)}
    claim = deliveries.claim(ctx.etcd, ctx.prefix, "registry", push.id)
    if claim == deliveries.SEEN:
        log.info("registry event %s (%s): ignored: seen before", push.id, push)
        return {**out, "result": "ignored", "reason": "event seen before"}
    if not isinstance(claim, deliveries.Claim):
        return {**out, "result": "busy", "reason": "another request is handling this event"}
    with claim:
        results = [_update_one(ctx, push, target) for target in targets]
        claim.failed = any(r["result"] == "failed" for r in results)
    return {**out, "result": "handled", "components": results}


def _update_one(ctx: ServeContext, push: R.Push, target: Follower) -> dict[str, Any]:
    """Roll `push` out to one component: updated, unchanged, skipped (and why) or failed."""
    name = target.component.name
    store = Store(ctx.etcd, target.project, ctx.prefix)
    image = f"{target.component.repo}@{push.digest}"
    out: dict[str, Any] = {"project": target.project, "component": name, "image": image}

    def outcome(result: str, reason: str) -> dict[str, Any]:
        level = logging.WARNING if result == "failed" else logging.INFO
        log.log(level, "registry event %s (%s): %s/%s %s: %s", push.id, push, target.project,
                name, result, reason)
        return {**out, "result": result, "reason": reason}

    current = store.desired(name)
    if current is not None and current.image == image:
        return outcome("unchanged", f"already at this digest (revision {current.revision})")
    if current is not None and current.status != "ready":
        return outcome("skipped", f"the component is {current.status}: a push does not start "
                                  "it (gantryd update does)")
    try:
        written = deploy.update(store, [name], docker_url=ctx.docker_url, cause=H.REGISTRY,
                                actor=_registry_actor(push), expected={name: image})
    except (deploy.DeployError, Conflict, ConfigError) as exc:  # a later push, a race
        return outcome("skipped", str(exc))
    except (GantryError, StoreError) as exc:  # the registry or etcd refused: retry later
        return outcome("failed", str(exc))
    revision = written.desired[name].revision
    log.info("registry event %s (%s): %s/%s updated: revision %d", push.id, push,
             target.project, name, revision)
    return {**out, "result": "updated", "revision": revision, "warnings": written.warnings}


def _registry_actor(push: R.Push) -> str:
    who = f"registry@{push.host}" if push.host else "registry"
    return f"{who} ({push.pusher})" if push.pusher else who


# -- generic -----------------------------------------------------------------------------------

def generic_hook(ctx: ServeContext, req: Req) -> Reply:
    """`gantryd update` of the body's components, signed with the webhook secret."""
    ctx.require_signature(req)
    if req.headers.get("x-github-event") == "ping":  # GitHub's hello when a hook is created
        return json_reply({"result": "pong"})
    project, names, tag = _generic_body(req.json_object())
    delivery = _delivery_id(req)
    store = ctx.store(project)
    config = store.require_config()
    for name in names:  # an unknown one: 400 before anything is claimed
        config.component(name)
    out: dict[str, Any] = {"delivery": delivery, "project": project}
    claim = deliveries.claim(ctx.etcd, ctx.prefix, "generic", delivery) if delivery else None
    if claim == deliveries.SEEN:
        log.info("generic webhook delivery %r: ignored: seen before", delivery)
        return json_reply({**out, "result": "ignored", "reason": "delivery seen before"})
    if claim == deliveries.BUSY:
        raise HttpError(409, f"delivery {delivery!r} is being handled by another request")
    actor = f"webhook:{delivery}" if delivery else "webhook"
    with claim if isinstance(claim, deliveries.Claim) else nullcontext():
        written = deploy.update(store, names, docker_url=ctx.docker_url, tag=tag,
                                cause=H.WEBHOOK, actor=actor)
    done = {name: {"image": d.image, "revision": d.revision}
            for name, d in written.desired.items()}
    log.info("generic webhook delivery %r: %s updated: %s", delivery, project,
             ", ".join(f"{n} r{d['revision']}" for n, d in done.items()))
    return json_reply({**out, "result": "updated", "components": done,
                       "warnings": written.warnings})


def _generic_body(body: dict[str, Any]) -> tuple[str, list[str], str | None]:
    """(project, components, tag) of a generic webhook's body (HttpError 400 otherwise)."""
    unknown = sorted(set(body) - set(GENERIC_KEYS))
    if unknown:
        raise HttpError(400, f"unknown key {unknown[0]!r} in the body; expected "
                             f"{', '.join(GENERIC_KEYS)}")
    project, names, tag = (body.get(k) for k in GENERIC_KEYS)
    if not isinstance(project, str) or not project:
        raise HttpError(400, '"project": expected a project name')
    if (not isinstance(names, list) or not names
            or not all(isinstance(n, str) and n for n in names)):
        raise HttpError(400, '"components": expected a non-empty list of component names')
    if len(set(names)) != len(names):
        raise HttpError(400, '"components": a component is named twice')
    if tag is not None and not TAG.accepts(tag):
        raise HttpError(400, f'"tag": expected {TAG.expected}')
    return project, names, tag


def _delivery_id(req: Req) -> str | None:
    """The sender's delivery id (None when it sends none); 400 when it is malformed."""
    for header in DELIVERY_HEADERS:
        if header in req.headers:
            value = req.headers[header].strip()
            if not 0 < len(value) <= MAX_DELIVERY_ID or not value.isprintable():
                raise HttpError(400, f"{header}: expected 1 to {MAX_DELIVERY_ID} printable "
                                     "characters")
            return value
    return None
