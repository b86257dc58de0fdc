"""What several command groups check before they write."""
from __future__ import annotations

import sys

from gantry.config import ConfigError

from .. import etcd as E
from ..store import Store


def unknown_components(store: Store, names: list[str]) -> bool:
    """Print why, and answer True, unless the project's config has every component."""
    config = store.require_config()  # StoreError (exit 1) for an unknown project
    for name in names:
        try:
            config.component(name)
        except ConfigError as exc:
            print(f"gantryd: {exc}", file=sys.stderr)
            return True
    return False


def watched_kv(ev: E.WatchEvent) -> E.KeyValue:
    """A watched put as a key-value, for the records' `from_kv` readers."""
    return E.KeyValue(ev.key, ev.value, 0, ev.mod_revision, 0, 0)
