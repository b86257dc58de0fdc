"""Rendering the published endpoints for a load balancer (consul-template style): a small
template language, the built-in `haproxy` and `nginx` formats written in it, and the output
file that is replaced atomically and followed by a reload command.

The template language: `string.Template` placeholders (`$name` or `${name}`, `$$` for a `$`)
in lines of text, and three directives, each alone on its line:

```
{{for group}} ... {{end}}          once per component port (every port of the config,
                                   with or without endpoints)
{{for endpoint}} ... {{end}}       once per healthy endpoint of the group (at the top
                                   level: of every group)
{{for endpoint}} ... {{else}} ... {{end}}   the `else` part when there is none
```
Placeholders: everywhere `project`, `count` (healthy endpoints in scope); in a group also
`component`, `port`, `kind` (tcp|http), `backend` (`<project>_<component>_<port>`, safe as
an HAProxy backend or nginx upstream name); in an endpoint also `machine`, `server` (the
machine as a safe server name), `address`, `hostport` (`address:port`, `[v6]:port`),
`revision`, `image`, `healthy`, `since`. A placeholder unknown where it stands, or a directive
out of place, is an error naming the file and line before anything is written.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from string import Template
from typing import Any, Sequence

from gantry.config import Config

from .endpoints import Endpoint

log = logging.getLogger("gantryd.endpoints")

RELOAD_TIMEOUT = 60.0  # seconds a reload command may take

HAPROXY = """\
# Rendered by `gantryd endpoints $project --format haproxy`: do not edit by hand.
{{for group}}

backend $backend
    mode $kind
    balance roundrobin
{{for endpoint}}
    server $server $hostport check
{{end}}
{{end}}
"""

# An upstream needs a server: a group without a healthy endpoint gets one marked down.
NGINX = """\
# Rendered by `gantryd endpoints $project --format nginx`: do not edit by hand.
{{for group}}

upstream $backend {
{{for endpoint}}
    server $hostport;
{{else}}
    server 127.0.0.1:9 down;  # no healthy endpoint
{{end}}
}
{{end}}
"""

FORMATS = {"haproxy": HAPROXY, "nginx": NGINX}

TOP = ("project", "count")
GROUP = TOP + ("component", "port", "kind", "backend")
ENDPOINT = GROUP + ("machine", "server", "address", "hostport", "revision", "image",
                    "healthy", "since")
_DIRECTIVE = re.compile(r"^\s*\{\{\s*(for\s+group|for\s+endpoint|else|end)\s*\}\}\s*$")


class TemplateError(ValueError):
    """A template that cannot render (its file and line named)."""


@dataclass(frozen=True)
class Group:
    """One component port and its endpoints."""

    component: str
    port: int
    kind: str
    endpoints: tuple[Endpoint, ...]

    @property
    def healthy(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.healthy)


def groups(config: Config | None, names: Sequence[str],
           endpoints: Sequence[Endpoint]) -> list[Group]:
    """Every port of `names` in the config (so a backend stays when its last host goes),
    plus any other port published (a host still serving an older config), in order."""
    kinds: dict[tuple[str, int], str] = {}
    for name in names:
        if config is not None and name in config.names:
            for p in config.component(name).ports:
                kinds.setdefault((name, p.external), p.kind)
    for e in endpoints:
        kinds.setdefault((e.component, e.port), e.kind)
    order = {name: i for i, name in enumerate(names)}
    keys = sorted(kinds, key=lambda k: (order.get(k[0], len(order)), k[0], k[1]))
    return [Group(c, port, kinds[(c, port)],
                  tuple(e for e in endpoints if (e.component, e.port) == (c, port)))
            for c, port in keys]


def safe_name(text: str) -> str:
    """Letters, digits, `_`, `.`, `-` only (others become `_`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


# -- the template ------------------------------------------------------------------------------

@dataclass
class _Node:
    """Text lines, or a loop (`kind` group|endpoint) with its body and else part."""

    line: int
    text: Template | None = None
    kind: str = ""
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] | None = None


class EndpointTemplate:
    """A parsed template (TemplateError when it is malformed)."""

    def __init__(self, text: str, source: str = "template"):
        self.source = source
        self.nodes = self._parse(text)

    @classmethod
    def load(cls, path: str) -> EndpointTemplate:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"{path}: cannot read the template: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
        return cls(text, path)

    def _error(self, line: int, message: str) -> TemplateError:
        return TemplateError(f"{self.source}:{line}: {message}")

    def _parse(self, text: str) -> list[_Node]:
        root: list[_Node] = []
        stack: list[tuple[_Node | None, list[_Node], tuple[str, ...]]] = [(None, root, TOP)]
        for number, line in enumerate(text.splitlines(keepends=True), 1):
            loop, into, names = stack[-1]
            found = _DIRECTIVE.match(line)
            if found is None:
                into.append(self._text(number, line, names))
                continue
            word = found.group(1).split()[-1]
            if word in ("group", "endpoint"):
                if names == ENDPOINT or (word == "group" and names != TOP):
                    raise self._error(number, f"{{{{for {word}}}}} cannot stand inside a "
                                              f"{{{{for {loop.kind if loop else '?'}}}}} loop")
                node = _Node(number, kind=word)
                into.append(node)
                stack.append((node, node.body, GROUP if word == "group" else ENDPOINT))
            elif loop is None:
                raise self._error(number, f"{{{{{word}}}}} outside a {{{{for ...}}}} loop")
            elif word == "else":
                if loop.orelse is not None:
                    raise self._error(number, "a second {{else}} in one loop")
                loop.orelse = []
                stack[-1] = (loop, loop.orelse, stack[-2][2])
            else:
                stack.pop()
        if len(stack) > 1:
            raise self._error(stack[-1][0].line, f"{{{{for {stack[-1][0].kind}}}}} has no "
                                                 "{{end}}")
        return root

    def _text(self, number: int, line: str, names: tuple[str, ...]) -> _Node:
        template = Template(line)
        if not template.is_valid():
            raise self._error(number, "a `$` that starts no placeholder (write `$$` for a "
                                      "dollar sign)")
        unknown = [n for n in template.get_identifiers() if n not in names]
        if unknown:
            raise self._error(number, f"unknown placeholder ${unknown[0]} here (known: "
                                      f"{', '.join(names)})")
        return _Node(number, text=template)

    def render(self, project: str, found: Sequence[Group]) -> str:
        """The text for these groups of `project`."""
        top = {"project": project, "count": sum(len(g.healthy) for g in found)}
        return "".join(self._render(self.nodes, top, found, None))

    def _render(self, nodes: list[_Node], values: dict[str, Any], found: Sequence[Group],
                group: Group | None) -> list[str]:
        out = []
        for node in nodes:
            if node.text is not None:
                out.append(node.text.substitute(values))
                continue
            if node.kind == "group":
                items = [({**values, **_group_values(values["project"], g)}, g) for g in found]
            else:
                scope = [group] if group is not None else found
                items = [({**values, **_group_values(values["project"], g),
                           **_endpoint_values(e)}, g) for g in scope for e in g.healthy]
            for inner, g in items:
                out += self._render(node.body, inner, found, g)
            if not items and node.orelse is not None:
                out += self._render(node.orelse, values, found, group)
        return out


def _group_values(project: str, g: Group) -> dict[str, Any]:
    return {"component": g.component, "port": g.port, "kind": g.kind, "count": len(g.healthy),
            "backend": safe_name(f"{project}_{g.component}_{g.port}")}


def _endpoint_values(e: Endpoint) -> dict[str, Any]:
    return {"machine": e.machine, "server": safe_name(e.machine), "address": e.address,
            "hostport": e.hostport,
            "revision": "" if e.revision is None else e.revision, "image": e.image or "",
            "healthy": "true" if e.healthy else "false", "since": e.since}


# -- the output file -----------------------------------------------------------------------------

class Output:
    """A file replaced atomically (temp file + rename) only when its content changes, then
    `reload_cmd` run by the shell; a failing reload is logged, never fatal."""

    def __init__(self, path: str, reload_cmd: str | None = None):
        self.path = path
        self.reload_cmd = reload_cmd

    def current(self) -> str | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError):
            return None

    def write(self, text: str) -> bool:
        """Replace the file with `text` unless it holds it already; answers whether it did
        (and then ran the reload command). OSError when the file cannot be written."""
        if self.current() == text:
            return False
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            mode = os.stat(self.path).st_mode & 0o7777
        except OSError:
            mode = 0o644
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".gantryd-endpoints-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        log.info("wrote %s", self.path)
        self.reload()
        return True

    def reload(self) -> bool:
        """Run the reload command (True: it exited 0, or there is none)."""
        if not self.reload_cmd:
            return True
        try:
            proc = subprocess.run(self.reload_cmd, shell=True, capture_output=True, text=True,
                                  timeout=RELOAD_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error("reload command timed out after %g s: %s", RELOAD_TIMEOUT,
                      self.reload_cmd)
            return False
        if proc.returncode != 0:
            log.error("reload command failed (exit %d): %s: %s", proc.returncode,
                      self.reload_cmd, (proc.stderr or proc.stdout).strip()[-500:])
            return False
        log.info("reloaded: %s", self.reload_cmd)
        return True
