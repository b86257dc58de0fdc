"""The config model: frozen dataclasses whose field declarations are the config reference.

JSON keys are camelCase, attributes snake_case, sequences are tuples. Field order here is the
order of ``to_dict()`` and of the generated ``docs/config.md``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, ConfigIssue
from .schema import (
    Boolean, Choice, Integer, ListOf, MapOf, Nullable, Obj, Reader, Seconds, Text, index, items,
    join,
    read_object, rule, show, spec, suggest, to_json, valid,
)

NAME = Text("a Docker-safe name matching [a-z0-9][a-z0-9_.-]*",
            "string `[a-z0-9][a-z0-9_.-]*`", pattern=r"[a-z0-9][a-z0-9_.-]*")
# Docker reference grammar, simplified: optional registry host[:port], lowercase path components.
REPO = Text('a Docker repository without a tag, such as "localhost:5000/team/app"',
            "image repository (no tag)",
            pattern=r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?"
                    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
TAG = Text("a Docker tag ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 characters)",
           "image tag", pattern=r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
STRING = Text()
ARGUMENT = Text("a string", allow_empty=True)
PORT = Integer(1, 65535, "an integer port 1-65535", "port 1-65535")
URL_PATH = Text('a URL path starting with "/"', 'URL path starting with `/`', pattern=r"/\S*")
# ":" would break Docker's host:container[:ro] bind syntax.
ABS_PATH = Text('an absolute path (starting with "/", without ":")',
                "absolute path", pattern=r"/[^:\x00]*")
ENV_NAME = Text('an environment variable name (non-empty, without "=")',
                "string (no `=`)", pattern=r"[^=\x00]+")
ENV_VALUE = Text("a string (quote numbers and booleans)", allow_empty=True)
POSITIVE = Integer(1, None, "an integer >= 1", "integer >= 1")
SECONDS = Seconds()
SECONDS_OR_ZERO = Seconds(allow_zero=True)
COMMAND = ListOf(ARGUMENT, noun="strings")
CONTEXT = Text("a directory path (relative to the config file's directory, or absolute)", "path",
               pattern=r"[^\x00]+")
IN_CONTEXT = Text('a path inside the build context (relative, without "..")', "relative path",
                  pattern=r"(?!/)(?!(?:.*/)?\.\.(?:/|$))[^\x00]+")
# No leading "-" (it would read as an option of git) and no ":" (gantry adds the sub-path).
GIT_REF = Text('a git commit, branch or tag (not starting with "-", without ":" or spaces)',
               "git ref", pattern=r"[^-:\s][^:\s]*")


@dataclass(frozen=True, kw_only=True)
class Port:
    """A port routed by the host's proxy from an external port to the container."""

    external: int = spec("external", PORT, "Port the proxy listens on, on the host.")
    container: int = spec("container", PORT, "Port inside the container traffic goes to.")
    kind: str = spec("kind", Choice("tcp", "http"),
                     "`http` lets the proxy close idle keep-alive connections while draining.",
                     default="tcp")


@dataclass(frozen=True, kw_only=True)
class Check:
    """A probe of a container: ready, health or termination check."""

    kind: str = spec("kind", Choice("http", "tcp", "docker"),
                     "`http`: GET `path` answers 2xx; `tcp`: `port` accepts a connection; "
                     "`docker`: the image's own HEALTHCHECK reports healthy.")
    port: int | None = spec("port", Nullable(PORT),
                            "Container port to probe (any port; required for `http`/`tcp`).",
                            default=None)
    path: str = spec("path", URL_PATH, "Path requested by `http` checks.", default="/")
    timeout: float = spec("timeout", SECONDS, "Time allowed for one probe.", default=2.0)
    interval: float = spec("interval", SECONDS, "Pause between probes.", default=1.0)


@dataclass(frozen=True, kw_only=True)
class ValueFrom:
    """Where a secret's value is read, on the host, each time a container is created. Only
    this reference is stored (etcd, the config hash); the value never is (docs/fleet.md,
    "Secrets")."""

    file: str | None = spec("file", ABS_PATH,
                            "A file on the host: its content, trailing newlines removed.",
                            default=None)
    env: str | None = spec("env", ENV_NAME,
                           "A variable of the environment of the process that creates the "
                           "container (`gantry`, or `gantryd run`).", default=None)


@dataclass(frozen=True, kw_only=True)
class EnvVar:
    """An environment variable of the container."""

    name: str = spec("name", ENV_NAME, "Variable name.")
    value: str | None = spec("value", ENV_VALUE, "Value; must be a string.", default=None)
    value_from: ValueFrom | None = spec(
        "valueFrom", Obj(ValueFrom),
        "Read the value on the host when the container is created (a secret).", default=None)


@dataclass(frozen=True, kw_only=True)
class Binding:
    """A host directory or file bind-mounted into the container."""

    host: str = spec("host", ABS_PATH, "Path on the host.")
    container: str = spec("container", ABS_PATH, "Path inside the container.")
    read_only: bool = spec("readOnly", Boolean(), "Mount read-only.", default=False)


@dataclass(frozen=True, kw_only=True)
class TerminationSignal:
    """Tells an old container to wind down before it is drained."""

    kind: str = spec("kind", Choice("http", "exec"),
                     "`http`: POST to `port`/`path`; `exec`: run `command` in the container.")
    port: int | None = spec("port", Nullable(PORT),
                            "Container port for `http` (required there).", default=None)
    path: str = spec("path", URL_PATH, "Path of the `http` POST.", default="/")
    command: tuple[str, ...] = spec("command", COMMAND,
                                    "Command for `exec` (required non-empty there).", default=())
    timeout: float = spec("timeout", SECONDS, "Time allowed for the signal.", default=5.0)


@dataclass(frozen=True, kw_only=True)
class Rollout:
    """How a fleet rollout of the component proceeds (gantryd)."""

    max_parallel: int = spec("maxParallel", POSITIVE,
                             "Number of hosts that may update the component at once.", default=1)
    on_failure: str = spec(
        "onFailure", Choice("halt", "rollback"),
        "After a host fails: `halt` the rollout fleet-wide, or `rollback`: halt and send the "
        "hosts that already moved back to the last stable revision (an auto-revert).",
        default="halt")
    keep_revisions: int = spec(
        "keepRevisions", POSITIVE,
        "Revisions kept in the fleet history (etcd), with their events; older ones are pruned.",
        default=100)
    min_healthy: float = spec(
        "minHealthy", SECONDS_OR_ZERO,
        "Bake time: after the switch the old container stays (drained, not routed) while the "
        "health checks run this long; a failure switches back to it (`gantry update` too).",
        default=0.0)
    max_parallel_pulls: int | None = spec(
        "maxParallelPulls", Nullable(POSITIVE),
        "Number of hosts that may pull the image at once (pull slots, apart from the "
        "switch slots); null: no limit.", default=None)


@dataclass(frozen=True, kw_only=True)
class Build:
    """An image built on this host from a Dockerfile (`gantry` only: fleet hosts deploy images
    pinned by digest from a registry). Tagged `gantry/<project>/<component>:<content hash>`;
    an unchanged context builds and redeploys nothing."""

    context: str = spec("context", CONTEXT,
                        "Directory sent to the builder; a relative path is relative to the "
                        "config file's directory.", default=".")
    dockerfile: str = spec("dockerfile", IN_CONTEXT, "The Dockerfile, inside the context.",
                           default="Dockerfile")
    args: tuple[tuple[str, str], ...] = spec(
        "args", MapOf(ENV_NAME, ENV_VALUE, noun="build arguments (strings)"),
        "Build arguments (`ARG`), as strings.", default=())
    target: str | None = spec("target", Nullable(STRING),
                              "Stage of a multi-stage Dockerfile to build; null: the last.",
                              default=None)
    ref: str | None = spec(
        "ref", Nullable(GIT_REF),
        "Take the context from this git commit, branch or tag of the repository the context "
        "directory is in (`git archive`), not from the work tree; null: the directory as it "
        "is.", default=None)
    #: The config file's directory, which a relative context is relative to ("": the current
    #: directory); set by the loader, not part of equality.
    base_dir: str = field(default="", compare=False, repr=False)

    @property
    def context_dir(self) -> str:
        """The context as a path (absolute when the config came from a file)."""
        return os.path.join(self.base_dir, self.context) if self.base_dir else self.context


@dataclass(frozen=True, kw_only=True)
class Component:
    """One containerised service and how to roll it out."""

    name: str = spec("name", NAME, "Component name; used in container labels and route names.")
    repo: str | None = spec("repo", Nullable(REPO),
                            "Image repository, e.g. `localhost:5000/team/app`; required unless "
                            "`build` is given.", default=None)
    tag: str = spec("tag", TAG, "Image tag; pinned to a digest when deployed.", default="latest")
    build: Build | None = spec(
        "build", Nullable(Obj(Build)),
        "Build the image on this host from a Dockerfile instead of pulling `repo:tag` "
        "(`gantry` only; `gantryd` refuses a component with `build` and no `repo`).",
        default=None)
    auto_update: bool = spec(
        "autoUpdate", Boolean(),
        "`gantryd serve`: a registry notification of a push to `repo:tag` rolls the pushed "
        "digest out, as `gantryd update` would (docs/serve.md). Not part of the container "
        "spec.", default=False)
    command: tuple[str, ...] = spec("command", COMMAND,
                                    "Command; empty means the image's own CMD/ENTRYPOINT.",
                                    default=())
    user: str | None = spec("user", Nullable(STRING),
                            "User to run as (`name`, `uid` or `uid:gid`); null: the image's.",
                            default=None)
    ports: tuple[Port, ...] = spec("ports", ListOf(Obj(Port), noun="ports"),
                                   "Ports routed through the proxy.", default=())
    ready_checks: tuple[Check, ...] = spec(
        "readyChecks", ListOf(Obj(Check), noun="checks"),
        "Checks that must all pass before traffic switches to a new container.", default=())
    health_checks: tuple[Check, ...] = spec(
        "healthChecks", ListOf(Obj(Check), noun="checks"),
        "Checks run while monitoring a running container (`gantry monitor`, `gantryd run`, "
        "the bake), every shortest `interval` of them. Without them the ready checks stand "
        "in, run at most once a second.", default=())
    ready_timeout: float = spec("readyTimeout", SECONDS,
                                "Deadline for the ready checks to pass.", default=60.0)
    health_failures: int = spec("healthFailures", POSITIVE,
                                "Consecutive failed health checks before the container is "
                                "replaced.", default=3)
    environment: tuple[EnvVar, ...] = spec(
        "environmentVariables", ListOf(Obj(EnvVar), noun="variables"),
        "Environment of the container.", default=())
    bindings: tuple[Binding, ...] = spec("bindings", ListOf(Obj(Binding), noun="bindings"),
                                         "Bind mounts.", default=())
    volumes_from: tuple[str, ...] = spec("volumesFrom", ListOf(STRING, noun="container names"),
                                         "Containers whose volumes are mounted.", default=())
    privileged: bool = spec("privileged", Boolean(), "Run the container privileged.",
                            default=False)
    termination_signals: tuple[TerminationSignal, ...] = spec(
        "terminationSignals", ListOf(Obj(TerminationSignal), noun="signals"),
        "Sent to an old container before draining it.", default=())
    termination_checks: tuple[Check, ...] = spec(
        "terminationChecks", ListOf(Obj(Check), noun="checks"),
        "Checks that pass once an old container is ready to be stopped.", default=())
    drain_timeout: float = spec("drainTimeout", SECONDS_OR_ZERO,
                                "Longest wait for an old container's connections to end.",
                                default=30.0)
    drain_idle_timeout: float | None = spec(
        "drainIdleTimeout", Nullable(SECONDS),
        "`http` ports: while draining, close keep-alive connections idle this long.",
        default=None)
    stop_timeout: float = spec("stopTimeout", SECONDS_OR_ZERO,
                               "Grace period of `docker stop` before the container is killed.",
                               default=10.0)
    retain_images: int = spec(
        "retainImages", POSITIVE,
        "Images of the last N versions run on a host kept there for a quick rollback; older "
        "ones gantry pulled for the component are removed (never one in use).", default=3)
    rollout: Rollout = spec("rollout", Obj(Rollout), "Fleet rollout settings.",
                            default=Rollout())

    #: JSON keys of what a container is created from (see :meth:`spec_hash`).
    SPEC_KEYS = ("repo", "command", "user", "ports", "environmentVariables", "bindings",
                 "volumesFrom", "privileged")

    @property
    def image(self) -> str:
        """``repo:tag``."""
        return f"{self.repo}:{self.tag}"

    @property
    def http_ports(self) -> tuple[Port, ...]:
        """The ports of kind ``http``."""
        return tuple(p for p in self.ports if p.kind == "http")

    def env_dict(self) -> dict[str, str]:
        """The literal environment as a dict, in declaration order; ``valueFrom`` variables
        are left out (gantry.secret_env reads them on the host)."""
        return {e.name: e.value for e in self.environment if e.value is not None}

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able dict (camelCase, defaults filled); parses back to ``self``."""
        return to_json(self)

    def spec_hash(self) -> str:
        """16 hex digits identifying what a container is created from.

        Covers repo, command, user, ports, environment, bindings, volumesFrom and privileged;
        not tag (the image is tracked by digest separately), checks, timeouts or rollout.
        Order of ports, environment and bindings does not matter.
        """
        data = self.to_dict()
        spec_data = {key: data[key] for key in self.SPEC_KEYS}
        spec_data["ports"].sort(key=lambda p: (p["container"], p["external"], p["kind"]))
        spec_data["environmentVariables"].sort(key=lambda e: e["name"])
        spec_data["bindings"].sort(key=lambda b: b["container"])
        canonical = json.dumps(spec_data, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


#: What a fleet notification can be about (gantryd/notify_events.py; docs/serve.md).
NOTIFY_EVENTS = ("started", "completed", "failed", "halted", "reverted", "rolled-back",
                 "remediation")
HTTP_URL = Text("an http:// or https:// URL", "URL (`http://` or `https://`)",
                pattern=r"https?://[^\s/?#]+(?:[/?#]\S*)?")


@dataclass(frozen=True, kw_only=True, repr=False)
class Notification:
    """A receiver of fleet rollout events (gantryd only; docs/serve.md, "Notifications")."""

    url: str = spec("url", HTTP_URL, "Where each event is POSTed.")
    format: str = spec("format", Choice("json", "slack"),
                       "`json`: the event as a JSON object; `slack`: `{\"text\": ...}` as a "
                       "Slack incoming webhook takes it.", default="json")
    secret: str | None = spec(
        "secret", Nullable(STRING),
        "When set, every delivery carries `X-Hub-Signature-256: sha256=<hex>`, the "
        "HMAC-SHA256 of the raw body under this secret.", default=None)
    events: tuple[str, ...] = spec(
        "events", ListOf(Choice(*NOTIFY_EVENTS), min_items=1, noun="event kinds"),
        "The kinds of event sent there.", default=NOTIFY_EVENTS)

    def __repr__(self) -> str:
        # The URL may itself be a credential (Slack's are): show the scheme and host only.
        scheme, _, rest = self.url.partition("://") if isinstance(self.url, str) else ("", "", "")
        host = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
        return (f"Notification(url={scheme}://{host}/..., format={self.format!r}, "
                f"secret={'***' if self.secret else None}, events={self.events!r})")


@dataclass(frozen=True, kw_only=True)
class Config:
    """A project's configuration: its components (the `.gantry` file)."""

    components: tuple[Component, ...] = spec(
        "components", ListOf(Obj(Component), min_items=1, noun="components"),
        "The components of the project.")
    notifications: tuple[Notification, ...] = spec(
        "notifications", ListOf(Obj(Notification), noun="notification targets"),
        "Where `gantryd run` sends rollout events: started, completed, host failed, halted, "
        "reverted, rolled back, health remediation (one delivery per event fleet-wide).",
        default=())
    #: Where the config came from, for messages; not part of equality.
    source: str = field(default="<config>", compare=False, repr=False)

    def component(self, name: str) -> Component:
        """The component called ``name``; ConfigError (with a suggestion) if there is none."""
        for c in self.components:
            if c.name == name:
                return c
        names = [c.name for c in self.components]
        hint = suggest(name, names)
        message = f"no component named {show(name)}; " + (
            f'did you mean "{hint}"?' if hint else "components: " + ", ".join(names))
        raise ConfigError.single(self.source, "components", message)

    @property
    def names(self) -> tuple[str, ...]:
        """Component names, in file order."""
        return tuple(c.name for c in self.components)

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able dict (camelCase, defaults filled); parses back to ``self``."""
        return to_json(self)

    def with_base_dir(self, base_dir: str) -> Config:
        """The config with relative build contexts taken relative to ``base_dir`` (the
        config file's directory)."""
        return dataclasses.replace(self, components=tuple(
            dataclasses.replace(c, build=dataclasses.replace(c.build, base_dir=base_dir))
            if c.build is not None else c for c in self.components))

    def check_fleet(self) -> None:
        """ConfigError unless every component names a registry image: fleet hosts run images
        pinned by digest at ``gantryd update``, never builds of their own."""
        problems = [ConfigIssue(self.source, join(index("components", i), "build"),
                                "gantryd cannot build images: fleet hosts deploy an image "
                                "pinned by digest from a registry; give \"repo\" (and \"tag\") "
                                "of the image built and pushed elsewhere, or deploy this "
                                "component with the single-host gantry")
                    for i, c in enumerate(self.components) if c.build is not None and not c.repo]
        if problems:
            raise ConfigError(problems)


# --- cross-field rules (documented in the reference from their text) ------------------------

@rule(Check, "`port` is required when `kind` is `http` or `tcp`.")
def _check_port(check: Check, path: str, ctx: Reader) -> None:
    if check.kind in ("http", "tcp") and check.port is None:
        ctx.issue(join(path, "port"), f"required for {check.kind} checks "
                                      "(expected an integer port 1-65535)")


@rule(TerminationSignal, "`port` is required when `kind` is `http`; `command` must be "
                         "non-empty when `kind` is `exec`.")
def _signal_target(sig: TerminationSignal, path: str, ctx: Reader) -> None:
    if sig.kind == "http" and sig.port is None:
        ctx.issue(join(path, "port"), "required for http termination signals "
                                      "(expected an integer port 1-65535)")
    if sig.kind == "exec" and valid(sig.command) and not sig.command:
        ctx.issue(join(path, "command"), "required for exec termination signals "
                                         "(expected a non-empty list of strings)")


def _unique(ctx: Reader, entries: list[tuple[Any, str, str]], what: str) -> None:
    """Report every entry whose key was already seen; entries are (key, path, label)."""
    seen: dict[Any, str] = {}
    for key, path, label in entries:
        if key in seen:
            ctx.issue(path, f"duplicate {what} {show(key)} (already used by {seen[key]})")
        else:
            seen[key] = label


def _one_of(ctx: Reader, path: str, first: tuple[str, Any, str],
            second: tuple[str, Any]) -> None:
    """Exactly one of two optional keys, given as (key, value read[, what it expects])."""
    (key1, value1, expected1), (key2, value2) = first, second
    if value1 is None and value2 is None:
        ctx.issue(join(path, key1), f'missing (expected {expected1}, or "{key2}")')
    elif value1 is not None and value2 is not None:
        ctx.issue(join(path, key2), f'give either "{key1}" or "{key2}", not both')


@rule(EnvVar, "Exactly one of `value` and `valueFrom`.")
def _env_value(var: EnvVar, path: str, ctx: Reader) -> None:
    _one_of(ctx, path, ("value", var.value, ENV_VALUE.expected), ("valueFrom", var.value_from))


@rule(ValueFrom, "Exactly one of `file` and `env`.")
def _value_from(source: ValueFrom, path: str, ctx: Reader) -> None:
    _one_of(ctx, path, ("file", source.file, ABS_PATH.expected), ("env", source.env))


@rule(Component, "`repo` is required unless `build` is given.")
def _repo_or_build(comp: Component, path: str, ctx: Reader) -> None:
    if comp.repo is None and comp.build is None:
        ctx.issue(join(path, "repo"), f'missing (expected {REPO.expected}, or a "build")')


@rule(Component, "Environment variable names are unique; so are the container paths of "
                 "bindings.")
def _component_unique(comp: Component, path: str, ctx: Reader) -> None:
    env_path = join(path, "environmentVariables")
    _unique(ctx, [(e.name, join(index(env_path, i), "name"), index(env_path, i))
                  for i, e in items(comp.environment) if valid(e.name)],
            "environment variable")
    bind_path = join(path, "bindings")
    _unique(ctx, [(b.container, join(index(bind_path, i), "container"), index(bind_path, i))
                  for i, b in items(comp.bindings) if valid(b.container)],
            "container path")


@rule(Config, "Component names are unique; external ports are unique across all components.")
def _config_unique(config: Config, path: str, ctx: Reader) -> None:
    comps = list(items(config.components))
    _unique(ctx, [(c.name, join(index("components", i), "name"), index("components", i))
                  for i, c in comps if valid(c.name)], "component name")
    ports = []
    for i, c in comps:
        for j, p in items(c.ports):
            if valid(p.external):
                where = index(join(index("components", i), "ports"), j)
                ports.append((p.external, join(where, "external"), where))
    _unique(ctx, ports, "external port")


@rule(Config, "No two notifications have the same `url` and `format`.")
def _notify_unique(config: Config, path: str, ctx: Reader) -> None:
    _unique(ctx, [((n.url, n.format), join(index("notifications", i), "url"),
                   index("notifications", i))
                  for i, n in items(config.notifications) if valid(n.url, n.format)],
            "notification target")


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate already-parsed JSON data (e.g. from a file or etcd) into a :class:`Config`.

    Raises :class:`ConfigError` listing every problem found.
    """
    ctx = Reader(source)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(
            source, "", f'expected an object with a "components" list, got {show(data)}')])
    config = read_object(Config, data, "", ctx)
    if ctx.issues:
        raise ConfigError(ctx.issues)
    return dataclasses.replace(config, source=source)
