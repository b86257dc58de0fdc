"""Registry credentials from the user's Docker config, as the docker CLI finds them.

The config is ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``, read again for
every pull or digest lookup (a ``docker login`` made while a daemon runs counts at once). For a
registry, ``credHelpers[registry]`` names a credential helper, else ``credsStore`` does, else
``auths[registry]`` holds ``auth`` (base64 of ``user:password``) or an ``identitytoken``. A
helper is the program ``docker-credential-<name>``, asked with ``get`` and the server on stdin.
The engine gets what was found as the ``X-Registry-Auth`` header; nothing found means no header
(an anonymous pull).
"""
from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
from typing import Any

log = logging.getLogger(__name__)

INDEX_NAME = "docker.io"
INDEX_URL = "https://index.docker.io/v1/"  # Docker Hub's key in configs and helpers
_TOKEN_USERNAME = "<token>"  # a helper's Username when its Secret is an identity token


class CredentialsError(Exception):
    """The Docker config or a credential helper could not be used (the message says why)."""


def split_reference(ref: str) -> tuple[str, str | None]:
    """``repo:tag`` / ``repo@sha256:...`` -> (repo, tag or digest); (ref, None) without."""
    repo, sep, digest = ref.rpartition("@")
    if sep:
        return repo, digest
    repo, sep, tag = ref.rpartition(":")
    if sep and "/" not in tag:
        return repo, tag
    return ref, None


def _hostname(url: str) -> str:
    return url.replace("http://", "").replace("https://", "").split("/", 1)[0]


def _index_name(name: str) -> str:
    host = _hostname(name)
    return INDEX_NAME if host == f"index.{INDEX_NAME}" else host


def registry_of(ref: str) -> str:
    """The registry an image reference is pulled from (``docker.io`` for Docker Hub)."""
    repo = split_reference(ref)[0]
    first, sep, _ = repo.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        return INDEX_NAME
    return _index_name(first)


def config_path() -> str | None:
    """The Docker config file in use, None when there is none."""
    directory = os.environ.get("DOCKER_CONFIG")
    path = (os.path.join(directory, "config.json") if directory
            else os.path.join(os.path.expanduser("~"), ".docker", "config.json"))
    return path if os.path.exists(path) else None


def _load() -> dict[str, Any]:
    path = config_path()
    if path is None:
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"cannot read the Docker config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CredentialsError(f"the Docker config {path} is not a JSON object")
    return data


def _from_entry(server: str, entry: Any) -> dict[str, str] | None:
    if not isinstance(entry, dict):
        raise CredentialsError(f"the Docker config's entry for {server} is not an object")
    if entry.get("identitytoken"):
        return {"IdentityToken": entry["identitytoken"]}
    if not entry.get("auth"):
        return None  # kept by a credential store
    try:
        user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise CredentialsError(f"the Docker config's auth for {server} is not base64 of "
                               f"user:password") from None
    return {"username": user, "password": password, "serveraddress": server}


def _from_helper(helper: str, server: str) -> dict[str, str] | None:
    program = f"docker-credential-{helper}"
    try:
        done = subprocess.run([program, "get"], input=server.encode(), capture_output=True,
                              timeout=60)
    except FileNotFoundError:
        raise CredentialsError(f"{program} (the Docker config's credential helper) is not "
                               f"installed or not in PATH") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CredentialsError(f"{program}: {exc}") from None
    output = (done.stdout or done.stderr).decode(errors="replace").strip()
    if done.returncode != 0:
        if "credentials not found" in output.lower():
            return None
        raise CredentialsError(f"{program} failed: {output or f'exit {done.returncode}'}")
    try:
        data = json.loads(output)
        user, secret = data["Username"], data["Secret"]
    except (ValueError, KeyError, TypeError):
        raise CredentialsError(f"{program} answered no credentials: {output[:80]!r}") from None
    if user == _TOKEN_USERNAME:
        return {"IdentityToken": secret, "ServerAddress": server}
    return {"Username": user, "Password": secret, "ServerAddress": server}


def credentials(registry: str) -> dict[str, str] | None:
    """What the Docker config holds for ``registry`` (None: nothing, pull anonymously)."""
    config = _load()
    server = INDEX_URL if registry == INDEX_NAME else registry
    helpers = config.get("credHelpers") or {}
    helper = helpers.get(server) or helpers.get(registry) or config.get("credsStore")
    if helper:
        found = _from_helper(helper, server)
        if found is not None:
            return found
    for key, entry in (config.get("auths") or {}).items():
        if key == registry or _index_name(key) == registry:
            return _from_entry(key, entry)
    return None


def header(ref: str) -> str | None:
    """The ``X-Registry-Auth`` value for pulling or resolving ``ref``; None without
    credentials."""
    found = credentials(registry_of(ref))
    if not found:
        return None
    return base64.urlsafe_b64encode(json.dumps(found).encode()).decode()
