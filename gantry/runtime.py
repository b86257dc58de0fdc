"""Docker access for gantry: images, containers, addresses.

:class:`Runtime` speaks to the engine through :class:`gantry.engine.Engine` and turns every
Docker failure into a one-line :class:`~gantry.errors.GantryError` (``DockerUnavailable`` when
the engine cannot be reached at all). Registry credentials come from the user's Docker config,
as with the docker CLI (:mod:`gantry.registry_auth`: ``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``, and credential helpers), read again for every pull and digest
lookup, so a ``docker login`` made while a daemon runs counts at once.

Backends. A component port is reached through an *address* of its container:

* ``backend_mode="loopback"`` (default): every needed container port is published on
  ``127.0.0.1`` with an ephemeral host port, and the address is ``127.0.0.1:<published>``.
  Works wherever the proxy runs on the Docker host, even when container IPs are not routable.
* ``backend_mode="container-ip"``: nothing is published; the address is the container's IP on
  its first network plus the container port (the classic gantryd way, for hosts where the
  bridge network is reachable from the proxy).

Ready/health checks probe the same addresses as the proxy, so a check passes only if the proxy
can reach the container too.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from . import labels as L
from . import registry_auth
from .engine import Engine, EngineError, NotFound, Unreachable, quote_name
from .registry_auth import CredentialsError, split_reference
from .errors import BuildFailed, DockerFailed, DockerUnavailable, GantryError, ImageError

log = logging.getLogger(__name__)

BACKEND_MODES = ("loopback", "container-ip")
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ContainerInfo:
    """What gantry needs to know about one container (a snapshot of ``docker inspect``)."""

    id: str
    name: str
    labels: L.GantryLabels
    status: str  # docker State.Status: created, running, restarting, exited, dead, ...
    exit_code: int | None
    health: str | None  # docker HEALTHCHECK status, None when the image has no HEALTHCHECK
    created: str  # RFC 3339, as docker reports it
    started_at: str
    ports: dict[int, int] = field(default_factory=dict)  # container tcp port -> loopback port
    ip: str | None = None
    restart_policy: str = ""  # HostConfig.RestartPolicy.Name ("" or "no": none)
    image_id: str = ""  # the id of the image it was created from

    @property
    def running(self) -> bool:
        return self.status in ("running", "restarting")

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "ContainerInfo":
        state = attrs.get("State") or {}
        net = attrs.get("NetworkSettings") or {}
        ports: dict[int, int] = {}
        for key, bindings in (net.get("Ports") or {}).items():
            number, _, proto = key.partition("/")
            if proto != "tcp" or not bindings:
                continue
            for b in bindings:
                if b.get("HostIp") in (LOOPBACK, "") and b.get("HostPort"):
                    ports[int(number)] = int(b["HostPort"])
                    break
        ip = None
        for network in (net.get("Networks") or {}).values():
            if network.get("IPAddress"):
                ip = network["IPAddress"]
                break
        health = (state.get("Health") or {}).get("Status")
        return cls(
            id=attrs["Id"],
            name=attrs.get("Name", "").lstrip("/"),
            labels=L.GantryLabels.from_dict((attrs.get("Config") or {}).get("Labels") or {}),
            status=state.get("Status", "unknown"),
            exit_code=state.get("ExitCode"),
            health=health,
            created=attrs.get("Created", ""),
            started_at=state.get("StartedAt", ""),
            ports=ports,
            ip=ip,
            restart_policy=((attrs.get("HostConfig") or {}).get("RestartPolicy") or {})
            .get("Name") or "",
            image_id=attrs.get("Image") or "",
        )


def _explain(exc: EngineError) -> str:
    text = exc.explanation.strip()
    return text.splitlines()[0] if text else str(exc)


@contextlib.contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Translate the engine's and the transport's exceptions into one-line GantryErrors."""
    try:
        yield
    except GantryError:
        raise
    except EngineError as exc:
        raise DockerFailed(f"{what}: {_explain(exc)}") from exc
    except CredentialsError as exc:
        raise DockerFailed(f"{what}: {exc}") from exc
    except (Unreachable, ConnectionError) as exc:
        raise DockerUnavailable(f"{what}: cannot reach the Docker engine ({exc})") from exc


# The engine's words when a registry wants credentials we lack, or refuses the ones we sent.
_NO_CREDENTIALS = ("no basic auth credentials",)
_REFUSED = ("unauthorized", "authentication required", "denied: requested access")


def registry_refused(message: str) -> bool:
    """Did the registry answer, refusing our credentials (or their absence)?"""
    text = message.lower()
    return any(needle in text for needle in _NO_CREDENTIALS + _REFUSED)


def _with_login_hint(ref: str, message: str) -> str:
    """``message``, naming the registry to `docker login` to when it refused us."""
    if not registry_refused(message):
        return message
    registry = registry_auth.registry_of(ref)
    if any(needle in message.lower() for needle in _NO_CREDENTIALS):
        return (f"{message} (no credentials for {registry} in the Docker config: "
                f"docker login {registry})")
    return f"{message} (the Docker config's credentials for {registry} were refused)"


def connect(base_url: str | None = None, timeout: float | None = 60) -> Engine:
    """The engine at ``base_url`` (default: the environment, like the docker CLI), pinged."""
    try:
        engine = Engine(base_url, timeout=timeout)
        engine.ping()
        return engine
    except (ValueError, EngineError, Unreachable) as exc:
        where = base_url or "DOCKER_HOST / the default socket"
        raise DockerUnavailable(f"cannot reach the Docker engine at {where}: "
                                f"{str(exc).removeprefix(base_url or '').lstrip(': ')}"
                                ) from exc


def split_digest_ref(ref: str) -> tuple[str, str | None]:
    """``repo@sha256:..`` -> (repo, digest); anything else -> (ref, None)."""
    repo, sep, digest = ref.partition("@")
    return (repo, digest) if sep else (ref, None)


def short_ref(ref: str) -> str:
    """``repo@sha256:<12 hex digits>`` for display; a ``repo:tag`` as it is."""
    repo, sep, digest = ref.partition("@")
    return f"{repo}@{digest[:19]}" if sep else ref  # sha256: + 12 hex digits


class Runtime:
    """Docker operations gantry needs, with clear errors. Thread-safe like the engine client."""

    def __init__(self, client: Engine, backend_mode: str = "loopback") -> None:
        if backend_mode not in BACKEND_MODES:
            raise ValueError(f"backend_mode must be one of {BACKEND_MODES}, not {backend_mode!r}")
        self.client = client
        self.backend_mode = backend_mode
        # Images this process pulled (or built): a container created from one records it (its
        # label io.gantry.images), so image retention removes only what gantry pulled.
        self.pulled: set[str] = set()

    # -- images ---------------------------------------------------------------------------
    def resolve(self, repo: str, tag: str) -> str:
        """``repo:tag`` -> the digest-pinned reference ``repo@sha256:...`` (asks the registry)."""
        ref = f"{repo}:{tag}"
        try:
            with docker_errors(f"resolving {ref}"):
                digest = self._registry_data(ref)["Descriptor"]["digest"]
        except DockerFailed as exc:
            cause = _with_login_hint(ref, str(exc).split(': ', 1)[-1])
            raise ImageError(f"cannot resolve image {ref}: {cause}") from exc
        return f"{repo}@{digest}"

    def _registry_data(self, ref: str) -> dict:
        """What the registry says of ``ref`` (through the engine, with our credentials)."""
        return self.client.call("GET", f"/distribution/{quote_name(ref)}/json",
                                headers=self._credentials(ref))

    @staticmethod
    def _credentials(ref: str) -> dict[str, str]:
        """The credentials header for ``ref``'s registry, read from the Docker config now."""
        header = registry_auth.header(ref)
        return {"X-Registry-Auth": header} if header else {}

    def has_image(self, ref: str) -> bool:
        return self.inspect_image(ref) is not None

    def pull(self, ref: str, on_event: Callable[[dict], None] | None = None) -> None:
        """Pull ``ref`` (normally digest-pinned); raise ImageError on any failure.
        ``on_event``: called with every event of the engine's pull stream (progress)."""
        repo, tag = split_reference(ref)
        try:
            with docker_errors(f"pulling {ref}"):
                for event in self.client.json_stream(
                        "POST", "/images/create", params={"fromImage": repo,
                                                          "tag": tag or "latest"},
                        headers=self._credentials(ref), timeout=None):
                    if isinstance(event, dict) and event.get("error"):
                        cause = _with_login_hint(ref, event["error"].strip())
                        raise ImageError(f"cannot pull {ref}: {cause}")
                    if on_event is not None and isinstance(event, dict):
                        on_event(event)
        except DockerFailed as exc:
            cause = _with_login_hint(ref, str(exc).split(': ', 1)[-1])
            raise ImageError(f"cannot pull {ref}: {cause}") from exc
        if not self.has_image(ref):
            raise ImageError(f"cannot pull {ref}: the engine reported no error but has no image")
        self.pulled.add(ref)

    def tags(self, repo: str) -> list[str]:
        """The local ``repo:tag`` references of ``repo``."""
        with docker_errors(f"listing the images of {repo}"):
            images = self.client.call("GET", "/images/json",
                                      params={"filters": {"reference": [repo]}})
        return sorted(t for image in images for t in image.get("RepoTags") or ()
                      if t.rpartition(":")[0] == repo)

    def inspect_image(self, ref: str) -> dict | None:
        """``docker image inspect ref``; None when there is no such local image."""
        with docker_errors(f"looking up image {ref}"):
            try:
                return self.client.call("GET", f"/images/{quote_name(ref)}/json")
            except NotFound:
                return None

    def image_id(self, ref: str) -> str | None:
        """The id of the local image ``ref``; None when there is none."""
        image = self.inspect_image(ref)
        return image["Id"] if image is not None else None

    def build(self, context: str, tag: str, *, dockerfile: str = "Dockerfile",
              args: dict[str, str] | None = None, target: str | None = None,
              on_event: Callable[[dict], None] | None = None) -> str:
        """``docker build`` of the directory ``context`` (its .dockerignore applies), tagged
        ``tag``; answers the image id. ``on_event``: every event of the builder's stream.
        BuildFailed carries the builder's own error."""
        # The Docker SDK, for its build contexts (.dockerignore, the tar stream): a single-host
        # command, so its import cost stays out of the host agents.
        import docker
        import docker.errors
        import requests.exceptions
        try:
            sdk = docker.APIClient(**{**docker.utils.kwargs_from_env(),
                                      "base_url": self.client.base_url})
            for event in sdk.build(path=context, tag=tag, dockerfile=dockerfile,
                                   buildargs=args or None, target=target, rm=True,
                                   forcerm=True, decode=True):
                if isinstance(event, dict) and event.get("error"):
                    raise BuildFailed(str(event["error"]).strip())
                if on_event is not None and isinstance(event, dict):
                    on_event(event)
        except docker.errors.APIError as exc:  # refused before building (a bad Dockerfile)
            text = exc.explanation or str(exc)
            text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
            raise BuildFailed(text.strip().splitlines()[0] if text.strip() else str(exc)
                              ) from exc
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
            raise DockerUnavailable(f"building {tag}: cannot reach the Docker engine "
                                    f"({exc})") from exc
        image_id = self.image_id(tag)
        if image_id is None:
            raise BuildFailed("the builder reported no error but the image is not there")
        return image_id

    def registry_has(self, ref: str) -> bool:
        """Can the registry serve ``ref`` (``repo@sha256:...``)? False when it says no or
        cannot be asked."""
        try:
            with docker_errors(f"asking the registry for {ref}"):
                self._registry_data(ref)
            return True
        except GantryError:
            return False

    def remove_image(self, ref: str) -> bool:
        """``docker rmi ref`` without force: an image a container uses (running or not) is
        refused by the engine and kept. Answers whether the reference went."""
        try:
            with docker_errors(f"removing image {ref}"):
                self.client.call("DELETE", f"/images/{quote_name(ref)}",
                                 params={"force": False, "noprune": False})
            return True
        except DockerFailed as exc:
            log.info("image %s kept: %s", ref, exc)
            return False

    def ensure_image(self, ref: str, on_event: Callable[[dict], None] | None = None) -> bool:
        """Make ``ref`` present locally; True when it had to be pulled (``on_event``: see
        :meth:`pull`)."""
        if self.has_image(ref):
            return False
        self.pull(ref, on_event)
        return True

    # -- containers -----------------------------------------------------------------------
    def create(
        self,
        name: str,
        image: str,
        labels: dict[str, str],
        *,
        command: Iterable[str] = (),
        user: str | None = None,
        environment: dict[str, str] | None = None,
        binds: dict[str, dict[str, str]] | None = None,
        volumes_from: Iterable[str] = (),
        privileged: bool = False,
        tcp_ports: Iterable[int] = (),
    ) -> str:
        """Create (not start) a container; answers its id."""
        with docker_errors(f"creating container {name}"):
            return self.client.call("POST", "/containers/create", params={"name": name},
                                    body=self.create_body(
                                        image, labels, command=command, user=user,
                                        environment=environment, binds=binds,
                                        volumes_from=volumes_from, privileged=privileged,
                                        tcp_ports=tcp_ports))["Id"]

    def create_body(self, image: str, labels: dict[str, str], *, command: Iterable[str] = (),
                    user: str | None = None, environment: dict[str, str] | None = None,
                    binds: dict[str, dict[str, str]] | None = None,
                    volumes_from: Iterable[str] = (), privileged: bool = False,
                    tcp_ports: Iterable[int] = ()) -> dict[str, Any]:
        """The engine's container config for :meth:`create` (what ``docker create`` sends)."""
        host: dict[str, Any] = {"NetworkMode": "default"}
        body: dict[str, Any] = {"Image": image, "Labels": labels, "Tty": False,
                                "Env": [f"{k}={v}" for k, v in (environment or {}).items()],
                                "HostConfig": host}
        if command:
            body["Cmd"] = list(command)
        if user:
            body["User"] = user
        if binds:
            body["Volumes"] = {b["bind"]: {} for b in binds.values()}
            host["Binds"] = [f"{path}:{b['bind']}:{b.get('mode', 'rw')}"
                             for path, b in binds.items()]
        if volumes_from:
            host["VolumesFrom"] = list(volumes_from)
        if privileged:
            host["Privileged"] = True
        if self.backend_mode == "loopback" and tcp_ports:
            # Ephemeral host ports on loopback only: the proxy and the checks use these.
            ports = sorted(set(tcp_ports))
            body["ExposedPorts"] = {f"{p}/tcp": {} for p in ports}
            host["PortBindings"] = {f"{p}/tcp": [{"HostIp": LOOPBACK, "HostPort": ""}]
                                    for p in ports}
        return body

    def _container(self, container_id: str, action: str = "") -> str:
        return f"/containers/{quote_name(container_id)}{action}"

    def start(self, container_id: str) -> None:
        with docker_errors(f"starting container {container_id[:12]}"):
            self.client.call("POST", self._container(container_id, "/start"))

    def inspect(self, container_id: str) -> ContainerInfo | None:
        """Fresh state of a container; None when it no longer exists."""
        with docker_errors(f"inspecting container {container_id[:12]}"):
            try:
                return ContainerInfo.from_attrs(
                    self.client.call("GET", self._container(container_id, "/json")))
            except NotFound:
                return None

    def list(self, label_filters: list[str]) -> list[ContainerInfo]:
        """All containers (running or not) carrying every ``key=value`` label, oldest first."""
        with docker_errors("listing containers"):
            summaries = self.client.call("GET", "/containers/json",
                                         params={"all": True,
                                                 "filters": {"label": label_filters}})
        infos = [info for s in summaries if (info := self.inspect(s["Id"])) is not None]
        return sorted(infos, key=lambda i: (i.created, i.id))

    def set_restart_policy(self, container_id: str, name: str) -> None:
        """``docker update --restart NAME`` on an existing container."""
        with docker_errors(f"setting the restart policy of {container_id[:12]}"):
            self.client.call("POST", self._container(container_id, "/update"),
                             body={"RestartPolicy": {"Name": name}})

    def stop(self, container_id: str, timeout: float) -> None:
        """``docker stop``: SIGTERM, then SIGKILL after ``timeout`` seconds. Gone is fine."""
        seconds = max(0, int(round(timeout)))
        with docker_errors(f"stopping container {container_id[:12]}"):
            try:
                # The HTTP timeout must outlast the engine's own stop timeout.
                self.client.call("POST", self._container(container_id, "/stop"),
                                 params={"t": seconds},
                                 timeout=(self.client.timeout or 60) + seconds)
            except NotFound:
                pass

    def remove(self, container_id: str) -> None:
        """Force-remove a container and its anonymous volumes. Gone is fine."""
        with docker_errors(f"removing container {container_id[:12]}"):
            try:
                self.client.call("DELETE", self._container(container_id),
                                 params={"v": True, "force": True})
            except NotFound:
                pass
            except EngineError as exc:
                if "already in progress" not in _explain(exc):
                    raise

    def exec(self, container_id: str, command: list[str], timeout: float) -> int | None:
        """Run ``command`` in the container; its exit code, or None if it outlived ``timeout``."""
        with docker_errors(f"exec in container {container_id[:12]}"):
            exec_id = self.client.call("POST", self._container(container_id, "/exec"), body={
                "AttachStdin": False, "AttachStdout": True, "AttachStderr": True, "Tty": False,
                "Privileged": False, "User": "", "Cmd": command})["Id"]
        done = threading.Event()

        def run() -> None:
            try:
                # Answered when the command ends (its output, not needed, comes as the body).
                self.client.call("POST", f"/exec/{exec_id}/start",
                                 body={"Detach": False, "Tty": False})
            except Exception as exc:  # reported through the exit code below
                log.debug("exec %s failed: %s", command, exc)
            finally:
                done.set()

        # exec_start has no timeout of its own; a daemon thread keeps a hung command from
        # blocking the drain (the command itself dies with the container).
        threading.Thread(target=run, daemon=True, name="gantry-exec").start()
        if not done.wait(timeout):
            return None
        with docker_errors(f"exec in container {container_id[:12]}"):
            return self.client.call("GET", f"/exec/{exec_id}/json").get("ExitCode")

    def logs_tail(self, container_id: str, lines: int = 5) -> str:
        """The last lines of a container's output (for error messages); '' if unavailable."""
        try:
            raw = b"".join(self.client.logs(container_id, follow=False, tail=lines))
        except Exception:  # best effort only
            return ""
        return raw.decode(errors="replace").strip()

    # -- addresses ------------------------------------------------------------------------
    def address(self, info: ContainerInfo, container_port: int) -> tuple[str, int] | None:
        """Where the proxy and the checks reach ``container_port``; None when unreachable
        (container stopped, or the port was not published)."""
        if self.backend_mode == "container-ip":
            return (info.ip, container_port) if info.ip else None
        host_port = info.ports.get(container_port)
        return (LOOPBACK, host_port) if host_port else None

    def backend(self, info: ContainerInfo, container_port: int) -> str | None:
        """``address`` as the proxy's ``host:port`` string."""
        addr = self.address(info, container_port)
        return f"{addr[0]}:{addr[1]}" if addr else None
