"""`gantryd serve` as a real subprocess for the tests: started on a free port, with a token
(and a webhook secret) in files, against the session etcd."""
from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests

from fleet_helpers import ROOT
from rig import free_port, wait_for


class Serve:
    """One `gantryd serve` process: `url`, `token`, `secret`, `get`/`post`, `logs()`."""

    def __init__(self, endpoints: list[str], *extra: str, env: dict[str, str] | None = None,
                 token: bool = True, base: Path | None = None):
        self.base = Path(base or tempfile.mkdtemp(prefix="gantryd-serve-"))
        self.token = secrets.token_hex(16)
        self.secret = secrets.token_hex(16)
        args = ["--webhook-secret-file", self._write("secret", self.secret)]
        if token:
            args += ["--token-file", self._write("token", self.token)]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "serve.log"
        argv = [sys.executable, "-m", "gantryd", "--etcd", ",".join(endpoints), "serve",
                "--listen", f"127.0.0.1:{self.port}", *args, *extra]
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        full_env.pop("GANTRYD_ETCD", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=full_env)
        wait_for(self._listening, 20, f"gantryd serve to listen\n{self.logs()}")

    def _write(self, name: str, value: str) -> str:
        path = self.base / name
        path.write_text(value + "\n")
        path.chmod(0o600)
        return str(path)

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gantryd serve exited {self.proc.returncode}\n{self.logs()}")
        return bool(re.search(r"listening on", self.logs()))

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str, json: Any = None, auth: bool = True, **kw: Any
             ) -> requests.Response:
        headers = {**(self.auth() if auth else {}), **kw.pop("headers", {})}
        return requests.post(self.url + path, json=json, headers=headers,
                             timeout=kw.pop("timeout", 60), **kw)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
