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


@dataclass
class LoadStats:
    """What a load run saw, per target address."""

    sent: int = 0
    failed: int = 0
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
        self._threads = [threading.Thread(target=self._run, args=(t, "/", False), daemon=True)
                         for t in targets for _ in range(short_workers)]
        self._threads += [threading.Thread(target=self._run, args=(t, f"/cgi-bin/slow?s={slow_seconds}", True),
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
                    if len(s.errors) < 20:
                        s.errors.append(f"{time.strftime('%H:%M:%S')} {path}: {answer}")
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
    conn = http.client.HTTPConnection(target[0], target[1], timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace").strip()
        if 200 <= resp.status < 300:
            return True, body
        return False, f"HTTP {resp.status} {body[:80]}"
    except (OSError, http.client.HTTPException) as e:
        return False, f"{type(e).__name__}: {e}"
    finally:
        conn.close()
