"""``gantryd serve [--listen 127.0.0.1:8700] [--token-file F] [--webhook-secret-file F]
[--tls-cert F --tls-key F]``: the HTTP face of the fleet (gantryd/serve/, docs/serve.md)."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from .. import etcd as E

ENV_TOKEN_FILE = "GANTRYD_TOKEN_FILE"


def register(command: Callable[..., argparse.ArgumentParser],
             components: Callable[..., None]) -> None:
    p = command("serve", "serve the HTTP API, the web page, webhooks and metrics (blocks)",
                project=False)
    p.add_argument("--listen", default="127.0.0.1:8700", metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:8700)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="file holding the bearer token that writes (update, rollback, the "
                        f"registry hook) must present (env {ENV_TOKEN_FILE}); without it, "
                        "writes are refused")
    p.add_argument("--webhook-secret-file", default=None, metavar="FILE",
                   help="file holding the HMAC-SHA256 secret of /v1/hooks/generic")
    p.add_argument("--tls-cert", default=None, metavar="FILE", help="PEM certificate (HTTPS)")
    p.add_argument("--tls-key", default=None, metavar="FILE", help="PEM private key (HTTPS)")
    p.add_argument("--docker", default=None,
                   help="Docker engine URL used to resolve tags (default: environment)")


def read_secret(path: str | None, what: str) -> str | None:
    """A token or secret from a file (first line, stripped); SystemExit with a clear line
    when it cannot be read or is empty. The value itself is never printed."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"gantryd serve: cannot read the {what} file {path}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    if not value:
        raise SystemExit(f"gantryd serve: the {what} file {path} is empty")
    return value


def cmd_serve(args: argparse.Namespace, etcd: E.Etcd, prefix: str) -> int:
    from ..serve.app import ServeContext
    from ..serve.server import parse_listen, run
    try:
        parse_listen(args.listen)
    except ValueError as exc:
        print(f"gantryd serve: {exc}", file=sys.stderr)
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("gantryd serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    token = read_secret(args.token_file or os.environ.get(ENV_TOKEN_FILE) or None, "token")
    secret = read_secret(args.webhook_secret_file, "webhook secret")
    ctx = ServeContext(etcd=etcd, prefix=prefix, token=token,
                       webhook_secret=secret.encode() if secret else None,
                       docker_url=args.docker)
    return run(ctx, args.listen, args.tls_cert, args.tls_key)


COMMANDS: dict = {}
PROJECTLESS = {"serve": cmd_serve}
