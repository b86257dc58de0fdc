"""Read-modify-write of one record per component in ONE etcd transaction, guarded on each
key's mod_revision (0: absent): a lost race re-reads and calls the change again. The records
of `traffic` and `freeze` are written this way."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from . import etcd as E
from .store import Conflict, Store

T = TypeVar("T")


def change_each(store: Store, components: Iterable[str], key: Callable[[str], str],
                load: Callable[[E.KeyValue], T], fn: Callable[[T | None], T],
                dump: Callable[[T], bytes], what: str) -> tuple[dict[str, T], int]:
    """Write ``fn(current)`` under ``key(component)`` for every component at once; answers
    the new records and the etcd revision of the transaction."""
    names = list(dict.fromkeys(components))
    for _ in range(10):
        kvs = {c: store.etcd.get(key(c)) for c in names}
        new = {c: fn(None if kv is None else load(kv)) for c, kv in kvs.items()}
        guards = [E.mod_revision_is(key(c), kv.mod_revision if kv else 0)
                  for c, kv in kvs.items()]
        result = store.etcd.txn(guards, [E.Put(key(c), dump(new[c])) for c in names])
        if result.succeeded:
            return new, result.revision
    raise Conflict(f"the {what} of {', '.join(names)} keeps changing; try again")
