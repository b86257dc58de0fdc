"""Images built on this host from a component's ``build`` (the single-host ``gantry`` only).

:func:`image` is what ``Lifecycle.update``/``start`` call for a component with ``build`` (and
no pinned image): it answers the reference of the image of the context as it is now, building
it only when no image of the same content is here.

* **Name.** ``gantry/<project>/<component>:<content hash>`` (:func:`local_repo`), whatever
  ``repo`` says: the build is this host's own, never pushed. The tag is what the container's
  ``io.gantry.image`` label records; the lifecycle compares image ids too, so a tag moved by
  someone else still counts as a new image.
* **Content hash** (:func:`content_hash`): SHA-256 over what the builder is sent -- every
  file, directory and symlink of the context that .dockerignore leaves (path, permission bits,
  contents or link target), the Dockerfile kept even if ignored, as ``docker build`` does --
  plus the Dockerfile path, the build args and the target; 16 hex digits. Not covered: what
  the Dockerfile fetches (``FROM`` a moved tag, downloads in ``RUN``): an unchanged context
  keeps its image.
* **Git.** With ``ref``, the context directory must be in a git work tree; the same directory
  at that commit is exported with ``git archive`` into a temporary directory and built from
  there (the work tree, uncommitted edits included, plays no part).
* **Retention.** Built images are gantry's own: they follow ``retainImages`` like pulled ones
  (gantry/retention.py), and a build no container ran (its update failed) goes at the next
  successful switch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import subprocess
import threading
from typing import Any, Iterator

from .buildprogress import BuildSummary
from .errors import BuildFailed, Cancelled

NAMESPACE = "gantry"
# One path component of a Docker repository name.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-*)[a-z0-9]+)*")
_CHUNK = 1 << 20


def _path_component(name: str) -> str:
    """``name`` if Docker takes it as a repository path component; else a cleaned form with a
    short hash of ``name`` (two names never share a repository)."""
    if _PATH_COMPONENT.fullmatch(name):
        return name
    clean = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "x"
    return f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def local_repo(project: str, component: str) -> str:
    """The repository built images of a component get: ``gantry/<project>/<component>``."""
    return f"{NAMESPACE}/{_path_component(project)}/{_path_component(component)}"


def _ignore_patterns(context: str) -> list[str]:
    """The .dockerignore patterns, read the way the Docker SDK reads them for the build."""
    path = os.path.join(context, ".dockerignore")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line.strip() for line in f.read().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(context: str, build: Any) -> str:
    """16 hex digits naming what ``build`` (a gantry.config.Build) sends the builder from the
    directory ``context`` (see the module doc)."""
    # The Docker SDK's reading of .dockerignore, the one the build itself uses (imported here:
    # only a component that builds needs it).
    from docker.utils.build import exclude_paths
    digest = hashlib.sha256(b"gantry-build-1\n")
    for rel in sorted(exclude_paths(context, _ignore_patterns(context),
                                    dockerfile=build.dockerfile)):
        path = os.path.join(context, rel)
        st = os.lstat(path)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            entry = ["link", rel, os.readlink(path)]
        elif stat.S_ISDIR(st.st_mode):
            entry = ["dir", rel, mode]
        elif stat.S_ISREG(st.st_mode):
            entry = ["file", rel, mode, _file_digest(path)]
        else:
            continue  # sockets, fifos: the builder does not take them either
        digest.update(json.dumps(entry).encode("utf-8", "surrogateescape") + b"\n")
    settings = {"dockerfile": build.dockerfile, "args": sorted(build.args),
                "target": build.target}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _git(cwd: str, *args: str, quiet: bool = False) -> str | None:
    """git's output; a failure raises BuildFailed with git's error (``quiet``: answers None)."""
    try:
        proc = subprocess.run(["git", "-C", cwd, *args], capture_output=True, text=True,
                              check=False)
    except OSError as exc:
        raise BuildFailed(f"cannot run git: {exc}") from exc
    if proc.returncode != 0 and quiet:
        return None
    if proc.returncode != 0:
        error = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise BuildFailed(f"git {' '.join(args)} in {cwd}: {error}")
    return proc.stdout.strip()


def _export(context: str, ref: str, into: str) -> str:
    """Write the directory ``context`` as it is at ``ref`` into ``into``; answers the commit."""
    if _git(context, "rev-parse", "--is-inside-work-tree", quiet=True) != "true":
        raise BuildFailed(f"build context {context} is not in a git work tree (build.ref "
                          f"{ref!r} takes it from one)")
    commit = _git(context, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", quiet=True)
    if not commit:
        raise BuildFailed(f"{ref!r} is not a commit, branch or tag of the git repository at "
                          f"{context}")
    prefix = str(_git(context, "rev-parse", "--show-prefix")).rstrip("/")
    # From the top: in a subdirectory, git archive reads tree paths relative to it.
    top = str(_git(context, "rev-parse", "--show-toplevel"))
    import tarfile  # here: gantryd, which imports this module, never builds

    proc = subprocess.Popen(["git", "-C", top, "archive", "--format=tar", f"{commit}:{prefix}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    problem = None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            archive.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        problem = str(exc)
        proc.kill()
    error = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0 or problem:
        raise BuildFailed(f"cannot export {ref} of {context}: {error or problem}")
    return commit


@contextlib.contextmanager
def _context(build: Any) -> Iterator[tuple[str, str]]:
    """(directory to build from, how to name it in messages)."""
    where = build.context_dir
    if not os.path.isdir(where):
        raise BuildFailed(f"build context {where} is not a directory")
    if build.ref is None:
        yield where, where
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gantry-build-") as tmp:
        commit = _export(where, build.ref, tmp)
        yield tmp, f"{where} at {build.ref} ({commit[:12]})"


def image(life: Any, component: Any, cancel: threading.Event | None = None) -> str:
    """The reference of the image of ``component``'s build context as it is now, built
    unless an image of that content is here (``life``: a Lifecycle). BuildFailed with the
    builder's error (nothing else changed); Cancelled when ``cancel`` is set meanwhile."""
    build, rep, rt, name = component.build, life.reporter, life.runtime, component.name
    with _context(build) as (context, where):
        ref = f"{local_repo(life.host.project, name)}:{content_hash(context, build)}"
        rt.pulled.add(ref)  # gantry's own image: retention may remove it once it is old
        if rt.has_image(ref):
            rep.step(f"{name}: {where} unchanged: image {ref} is here (no build)")
            return ref
        rep.step(f"{name}: building {ref} from {where}")
        summary = BuildSummary()

        def on_event(event: dict) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled during the build of {ref}")
            rep.build_progress(name, summary, summary.feed(event))

        try:
            rt.build(context, ref, dockerfile=build.dockerfile, args=dict(build.args),
                     target=build.target, on_event=on_event)
        except BuildFailed as exc:
            for line in summary.output:
                rep.step(f"{name}: build output: {line}")
            at = f" at {summary.where()}" if summary.step else ""
            raise BuildFailed(f"build of {where} failed{at}: {exc}") from exc
        finally:
            rep.build_progress(name, None)
        rep.step(f"{name}: built {ref}")
        return ref
