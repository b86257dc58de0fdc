"""One line summarising a ``docker pull`` in progress (pure: pull events in, a line out).

The Docker engine streams one JSON event per layer step (``Pulling fs layer``, ``Downloading``
with ``progressDetail`` current/total bytes, ``Download complete``, ``Extracting``, ``Pull
complete``, ``Already exists``) among a few events about the whole image. :class:`PullSummary`
folds them into ``3/5 layers  12.4/40.1 MB``: layers done of layers seen, bytes downloaded of
the bytes known so far (a layer's size is known once its download starts).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# Layer statuses after which the layer's bytes are all here.
_DOWNLOADED = frozenset({"Verifying Checksum", "Download complete", "Extracting",
                         "Pull complete"})
_DONE = frozenset({"Pull complete", "Already exists"})
_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"))


@dataclass
class _Layer:
    done: bool = False
    current: int = 0
    total: int = 0  # 0: not known yet (download not started, or the layer already exists)


def _is_layer_event(event: Mapping[str, Any]) -> bool:
    # Whole-image events ("Pulling from ...", "Digest: ...", "Status: ...") carry no
    # progressDetail; every layer event does, even an empty one.
    return "id" in event and "progressDetail" in event


def format_bytes(current: float, total: float) -> str:
    """``12.4/40.1 MB``: both in the unit that suits ``total``."""
    size, unit = next(((s, u) for s, u in _UNITS if total >= s), (1, "B"))
    if size == 1:
        return f"{current:.0f}/{total:.0f} B"
    return f"{current / size:.1f}/{total / size:.1f} {unit}"


class PullSummary:
    """Folds the pull events of one image, in order; :meth:`line` is the summary so far."""

    def __init__(self) -> None:
        self._layers: dict[str, _Layer] = {}

    def feed(self, event: Mapping[str, Any]) -> None:
        if not _is_layer_event(event):
            return
        layer = self._layers.setdefault(str(event["id"]), _Layer())
        status = str(event.get("status", ""))
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            layer.total = int(detail["total"])
            layer.current = int(detail.get("current") or 0)
        elif status in _DOWNLOADED:
            layer.current = layer.total
        layer.done = layer.done or status in _DONE

    def line(self) -> str:
        """``3/5 layers  12.4/40.1 MB`` (bytes left out until a download starts); '' before
        the first layer event."""
        if not self._layers:
            return ""
        done = sum(layer.done for layer in self._layers.values())
        text = f"{done}/{len(self._layers)} layers"
        total = sum(layer.total for layer in self._layers.values())
        if total:
            current = sum(layer.current for layer in self._layers.values())
            text += f"  {format_bytes(current, total)}"
        return text
