"""Steady HTTP load against one or more addresses, counting every request's outcome.

Used by the demo, the scorecard and end-to-end tests to prove "zero failed requests": each
worker thread sends requests in a loop (a new connection per request, so every request goes
through the proxy's accept path) until stopped, and records which version answered.
"""
from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class LoadStats:
    """What a load run saw, per target address."""

    started: int = 0  # requests begun; `sent` counts those that ended (ok or failed)
    sent: int = 0
    failed: int = 0
    refused: int = 0  # of the failed: the connect was refused (nothing listened)
    versions: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    slow_sent: int = 0
    slow_failed: int = 0


class Load:
    """Background HTTP load: ``short_workers`` threads per target sending ``GET /`` and,
    optionally, ``slow_workers`` threads per target holding ``/cgi-bin/slow?s=N`` requests."""

    def __init__(self, targets: list[tuple[str, int]], short_workers: int = 2,
                 slow_workers: int = 0, slow_seconds: float = 3, timeout: float = 30,
                 pause: float = 0.0):
        self.targets = targets
        self.stats = {t: LoadStats() for t in targets}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timeout = timeout
        self._pause = pause
        # Called (target, path, why, began: its time.monotonic()) on every failed request,
        # from the worker's thread, once the request is counted.
        self.on_failure: Callable[[tuple[str, int], str, str, float], None] | None = None
        self._threads = [threading.Thread(target=self._run, args=(t, "/", False), daemon=True)
                         for t in targets for _ in range(short_workers)]
        slow_path = f"/cgi-bin/slow?s={slow_seconds}"
        self._threads += [threading.Thread(target=self._run, args=(t, slow_path, True),
                                           daemon=True)
                          for t in targets for _ in range(slow_workers)]

    def __enter__(self) -> "Load":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop sending; requests in flight complete (and are counted) first."""
        self._stop.set()
        for t in self._threads:
            t.join(self._timeout + 5)

    def _run(self, target: tuple[str, int], path: str, slow: bool) -> None:
        while not self._stop.is_set():
            with self._lock:
                self.stats[target].started += 1
            began = time.monotonic()
            ok, answer = request(target, path, self._timeout)
            with self._lock:
                s = self.stats[target]
                s.sent += 1
                s.slow_sent += slow
                if ok:
                    s.versions[answer] += 1
                else:
                    s.failed += 1
                    s.slow_failed += slow
                    s.refused += answer.startswith(ConnectionRefusedError.__name__)
                    if len(s.errors) < 20:
                        s.errors.append(f"{time.strftime('%H:%M:%S')} {path}: {answer}")
            if not ok and self.on_failure is not None:
                self.on_failure(target, path, answer, began)
            if self._pause:
                self._stop.wait(self._pause)

    # Totals over every target.
    @property
    def sent(self) -> int:
        with self._lock:
            return sum(s.sent for s in self.stats.values())

    @property
    def failed(self) -> int:
        with self._lock:
            return sum(s.failed for s in self.stats.values())

    @property
    def refused(self) -> int:
        with self._lock:
            return sum(s.refused for s in self.stats.values())

    def ended(self, target: tuple[str, int]) -> int:
        """Requests to `target` that have ended so far."""
        with self._lock:
            return self.stats[target].sent

    def in_flight_since(self, target: tuple[str, int], ended_before: int) -> int:
        """Requests to `target` begun by now that had not ended when `ended(target)` answered
        `ended_before`: read `ended` just before an event and this just after, and it bounds
        the requests in flight at the event."""
        with self._lock:
            return self.stats[target].started - ended_before

    def versions(self) -> Counter:
        with self._lock:
            total: Counter = Counter()
            for s in self.stats.values():
                total.update(s.versions)
            return total

    def errors(self) -> list[str]:
        with self._lock:
            return [e for s in self.stats.values() for e in s.errors]

    def wait_for(self, predicate, timeout: float) -> bool:
        """Poll ``predicate(self)`` until true or the deadline; answer whether it came true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)


def request(target: tuple[str, int], path: str = "/", timeout: float = 30) -> tuple[bool, str]:
    """One GET on a new connection: (True, body stripped) on a 2xx, else (False, why)."""
    try:
        status, body = fetch(target, path, timeout)
    except (OSError, http.client.HTTPException) as e:
        return False, f"{type(e).__name__}: {e}"
    if 200 <= status < 300:
        return True, body
    return False, f"HTTP {status} {body[:80]}"


def fetch(target: tuple[str, int], path: str = "/", timeout: float = 30) -> tuple[int, str]:
    """One GET on a new connection: (status, whole body stripped); raises on a network error."""
    conn = http.client.HTTPConnection(target[0], target[1], timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace").strip()
    finally:
        conn.close()


def sample(target: tuple[str, int], count: int, path: str = "/") -> Counter:
    """``count`` requests, one after the other, each on a new connection: how many times each
    answer came (failures as ``error: ...``). Shows how a route splits new connections."""
    answers: Counter = Counter()
    for _ in range(count):
        ok, body = request(target, path, timeout=10)
        answers[body if ok else f"error: {body}"] += 1
    return answers
