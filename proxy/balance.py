"""Choosing the backend of a new connection when a route has several active ones.

Smooth weighted round-robin (as nginx's upstream module does it): every pick adds each
backend's weight to its running score, takes the highest and subtracts the total from it.
Over one cycle of `sum(weights)` picks each backend gets exactly its weight, spread evenly
(weights 90/10 give one canary connection in ten, not ten in a row). `sticky` instead maps the
client address onto the weights with a stable hash, so a client keeps its backend across
connections and proxy restarts while the weights stay the same.
"""

from __future__ import annotations

import zlib
from typing import Generic, Sequence, TypeVar

T = TypeVar("T")


class Balancer(Generic[T]):
    """Picks among `(item, weight)` pairs; weights are positive integers."""

    def __init__(self, weighted: Sequence[tuple[T, int]], sticky: bool = False):
        if not weighted:
            raise ValueError("a balancer needs at least one backend")
        self.items = [item for item, _ in weighted]
        self.weights = [weight for _, weight in weighted]
        self.total = sum(self.weights)
        self.sticky = sticky
        self._scores = [0] * len(self.items)

    def pick(self, client_host: str | None = None) -> T:
        """The backend for the next connection (from `client_host`, for sticky routes)."""
        if self.sticky and client_host is not None:
            point = zlib.crc32(client_host.encode()) % self.total
            for item, weight in zip(self.items, self.weights, strict=True):
                if point < weight:
                    return item
                point -= weight
        scores, weights = self._scores, self.weights
        best = 0
        for i, weight in enumerate(weights):
            scores[i] += weight
            if scores[i] > scores[best]:
                best = i
        scores[best] -= self.total
        return self.items[best]
