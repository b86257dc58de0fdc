"""The Docker registry's notification envelopes (`{"events": [...]}`, media type
`application/vnd.docker.distribution.events.v1+json`) and which component a push is for.
Pure: no etcd, no Docker.

Only the push of a manifest *with a tag* can move a tag; pulls, mounts, deletes, blob
pushes and manifests pushed by digest alone are ignored, each with its reason.

Matching a component's `repo` (`HOST[:PORT]/PATH`) against a push of repository `PATH` seen
by the registry under `request.host` (the Host header the pusher used):
- the paths must be equal (a `repo` without a host is Docker Hub's: `library/` is implied for
  a one-segment path);
- the hosts must name the same registry: equal ignoring case, where every loopback name
  (`localhost`, `127.x.x.x`, `::1`) is one name, and the ports must be equal (no port is not
  port 443 or 80: Docker keeps them apart too); `docker.io`, `index.docker.io` and
  `registry-1.docker.io` are one name;
- an event without `request.host` matches on the path alone.
A wrong match can deploy nothing wrong: the update asks the component's own registry for the
tag and goes ahead only if it answers the pushed digest.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from gantry.config.model import REPO, TAG

MANIFEST_TYPES = frozenset({
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
})
DOCKER_HUB = "docker.io"
_HUB_NAMES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class BadEnvelope(ValueError):
    """The body is not a notification envelope."""


@dataclass(frozen=True)
class Push:
    """A tag pushed to a repository: the only event that moves a tag."""

    id: str
    host: str | None  # the registry as the pusher named it (request.host)
    repository: str  # the path, without the host
    tag: str
    digest: str
    pusher: str | None = None  # actor.name, when the registry authenticates

    def __str__(self) -> str:
        where = f"{self.host}/" if self.host else ""
        return f"{where}{self.repository}:{self.tag}@{self.digest}"


def events(envelope: Any) -> list[Any]:
    """The events of an envelope (BadEnvelope when it is not one)."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("events"), list):
        raise BadEnvelope('expected a registry notification envelope: {"events": [...]}')
    return envelope["events"]


def push_of(event: Any) -> Push | str:
    """The tag push an event reports, or why it is ignored."""
    if not isinstance(event, dict):
        return "not an event object"
    action = event.get("action")
    if action != "push":
        return f"{_text(action) or 'no'} action: only pushes move a tag"
    target = event.get("target") if isinstance(event.get("target"), dict) else {}
    media = target.get("mediaType")
    if not isinstance(media, str) or media not in MANIFEST_TYPES:
        return f"push of a {_text(media) or 'blob'}: not a manifest"
    tag, digest, repository = target.get("tag"), target.get("digest"), target.get("repository")
    if not tag:
        return "manifest pushed without a tag"
    for ok, value, what in ((TAG.accepts(tag), tag, "tag"),
                            (isinstance(digest, str) and _DIGEST.fullmatch(digest), digest,
                             "digest"),
                            (REPO.accepts(repository), repository, "repository")):
        if not ok:
            return f"bad {what} {_text(value)!r}"
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id:
        return "event without an id"
    request = event.get("request") if isinstance(event.get("request"), dict) else {}
    actor = event.get("actor") if isinstance(event.get("actor"), dict) else {}
    return Push(event_id, _text(request.get("host")) or None, repository, tag, digest,
                _text(actor.get("name")) or None)


def split_repo(repo: str) -> tuple[str, str]:
    """`HOST[:PORT]/PATH` -> (host, path) by Docker's rule (the first segment is a host when
    it has a `.` or `:` or is `localhost`); Docker Hub's when there is none."""
    first, sep, rest = repo.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return DOCKER_HUB, repo


def matches(repo: str, push: Push) -> bool:
    """Whether `push` is to the repository `repo` names (see the module's rules)."""
    host, path = split_repo(repo)
    if _path(host, path) != _path(host, push.repository):
        return False
    return push.host is None or same_registry(host, push.host)


def same_registry(a: str, b: str) -> bool:
    """Whether two `host[:port]` name the same registry."""
    return _host_key(a) == _host_key(b)


def _path(host: str, path: str) -> str:
    return f"library/{path}" if _host_key(host)[0] == DOCKER_HUB and "/" not in path else path


def _host_key(host: str) -> tuple[str, str]:
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        name, _, port = host[1:].partition("]")
        port = port.lstrip(":")
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        name, port = host, ""
    if name in _HUB_NAMES:
        return DOCKER_HUB, port
    try:
        loopback = name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    return ("localhost" if loopback else name), port


def _text(value: Any) -> str:
    """A sender's value, shortened for answers and logs."""
    return value[:200] if isinstance(value, str) else ""
