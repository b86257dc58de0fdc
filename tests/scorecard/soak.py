"""The soak: hundreds of rollouts in a row on a 3-host fleet under continuous load, watching
for anything that grows without bound (scripts/soak prints the figures).

Back-to-back updates (v1 <-> v2) with a rollback every fifth time, each waited for. Every
`sample_every` rollouts it samples, for every gantryd and gantry-proxy process, the resident
memory and the open file descriptors, and for etcd the number of keys and the database size,
plus the project's containers and images on the engine. The slope of each series is fitted
over the second half of the run (after the warm-up: caches filled, history at its bound) and
reported per 100 rollouts; a slope above its limit is a failure, as are failed requests,
leaked containers, images beyond retention and history beyond keepRevisions.
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import docker

from scenarios import HOSTS, PROJECT_LABEL, _settle, loadgen, open_fleet, rig
from fleet_helpers import private_copy  # noqa: I001  (on sys.path once scenarios is imported)
from gantryd.revisions import CONFIG_LOG_KEEP

COMPACTION = ("--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000")
KEEP_REVISIONS = 10  # small, so that the history reaches its bound early in the run
RETAIN_IMAGES = 2

# Growth per 100 rollouts, in the second half of the run, above which a series fails.
LIMITS = {"rss_mb": 3.0, "fds": 2.0, "etcd_keys": 5.0, "etcd_db_mb": 2.0, "containers": 0.5,
          "images": 0.5}


@dataclass
class Sample:
    rollouts: int
    rss_mb: dict[str, float]
    fds: dict[str, int]
    etcd_keys: int
    etcd_db_mb: float
    containers: int
    images: int

    def series(self) -> dict[str, float]:
        """One number per series: per-process figures summed by kind."""
        out: dict[str, float] = {"etcd_keys": self.etcd_keys, "etcd_db_mb": self.etcd_db_mb,
                                 "containers": self.containers, "images": self.images}
        for kind in ("gantryd", "proxy"):
            out[f"{kind}_rss_mb"] = sum(v for k, v in self.rss_mb.items() if k.startswith(kind))
            out[f"{kind}_fds"] = sum(v for k, v in self.fds.items() if k.startswith(kind))
        return out


@dataclass
class SoakResult:
    rollouts: int = 0
    requests: int = 0
    failed: int = 0
    leaked: int = 0
    seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    slopes: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points (0 for fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in points) / var


def limit_of(name: str) -> float:
    for suffix, limit in LIMITS.items():
        if name.endswith(suffix):
            return limit
    raise KeyError(name)


def judge(samples: list[Sample]) -> tuple[dict[str, float], list[str]]:
    """Slopes per 100 rollouts over the second half, and the series that grow too fast."""
    half = [s for s in samples if s.rollouts >= samples[-1].rollouts / 2] if samples else []
    slopes, problems = {}, []
    for name in (half[0].series() if half else {}):
        per_100 = 100 * slope([(s.rollouts, s.series()[name]) for s in half])
        slopes[name] = per_100
        if per_100 > limit_of(name):
            problems.append(f"{name} grows {per_100:+.2f} per 100 rollouts "
                            f"(limit {limit_of(name)})")
    return slopes, problems


def _proc(pid: int) -> tuple[float, int]:
    """(RSS in MB, open fds) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    import os
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def _etcd_status(cluster: rig.EtcdCluster) -> float:
    """The etcd database size in MB (the first member's)."""
    out = json.loads(cluster.etcdctl("endpoint", "status", "-w", "json"))
    return out[0]["Status"]["dbSize"] / 1e6


def _images(repo: str) -> int:
    out = subprocess.run(["docker", "images", "-q", "--no-trunc", repo], capture_output=True,
                         text=True, check=True).stdout.split()
    return len(set(out))


def _containers(project: str) -> int:
    return len(subprocess.run(["docker", "ps", "-aq", "--filter",
                               f"label={PROJECT_LABEL}={project}"],
                              capture_output=True, text=True, check=True).stdout.split())


def sample(fleet, cluster: rig.EtcdCluster, rollouts: int, repo: str) -> Sample:
    rss, fds = {}, {}
    for host in HOSTS:
        for kind, pid in (("gantryd", fleet.procs[host].pid),
                          ("proxy", fleet._proxy_pid(fleet.base / host))):
            if pid:
                rss[f"{kind}-{host}"], fds[f"{kind}-{host}"] = _proc(pid)
    # A host frees its rollout slot once the old container is drained and stops it after
    # (docs/fleet.md), so `wait` can return with that one still going: give it a moment. A
    # leaked container stays, and is counted.
    try:
        rig.wait_for(lambda: _containers(fleet.project) <= len(HOSTS), 30)
    except rig.WaitTimeout:
        pass
    # The config log is bounded on its own (CONFIG_LOG_KEEP, checked at the end) and fills
    # only after that many setconfigs: it is left out of the key count's slope.
    keys = [k for k in fleet.etcd.get_keys("/") if "/configlog/" not in k]
    return Sample(rollouts, rss, fds, len(keys), _etcd_status(cluster),
                  _containers(fleet.project), _images(repo))


def run_soak(rollouts: int, images: dict[str, str], sample_every: int = 10,
             progress: Callable[[str], None] = print, project: str | None = None) -> SoakResult:
    """The whole soak on a fresh single-member etcd and a fresh fleet."""
    from fleet_helpers import component
    project = project or f"soak-{int(time.time())}"
    # etcd keeps every old revision until compacted (gantryd does not compact: an etcd may be
    # shared); run it as docs/fleet.md says to, with auto-compaction, or its database grows
    # with every write however bounded gantry's keys are.
    cluster = rig.EtcdCluster(size=1, extra_args=COMPACTION).start()
    result = SoakResult()
    started = time.monotonic()
    extra: dict[str, Any] = {"retainImages": RETAIN_IMAGES, "drainTimeout": 5,
                             "rollout": {"keepRevisions": KEEP_REVISIONS}}
    docker_client = docker.from_env()
    try:
        with open_fleet(cluster.endpoints, project) as fleet, \
                private_copy(docker_client, "v1", project) as (repo, _), \
                private_copy(docker_client, "v2", project):
            # A repository of the soak's own, so the engine's images of it are what gantry
            # pulled and retains, nothing else.
            images = {**images, "v1": f"{repo}:v1", "v2": f"{repo}:v2"}
            fleet.deploy_v1(images, **extra)
            targets = [fleet.address(h) for h in HOSTS]
            with loadgen.Load(targets, short_workers=1) as load:
                result.samples.append(sample(fleet, cluster, 0, repo))
                for i in range(1, rollouts + 1):
                    if i % 5 == 0:
                        fleet.cli("rollback", project, "-c", "web")
                    else:
                        variant = "v2" if i % 2 else "v1"
                        fleet.setconfig(component(images, variant, fleet.port, **extra))
                        fleet.update()
                    fleet.wait_done(timeout=120)
                    result.rollouts = i
                    if i % sample_every == 0 or i == rollouts:
                        s = sample(fleet, cluster, i, repo)
                        result.samples.append(s)
                        progress(f"soak: {i} rollouts, {load.sent} requests, {load.failed} "
                                 f"failed, {s.etcd_keys} keys, {s.containers} containers, "
                                 f"{s.images} images")
            result.requests, result.failed = load.sent, load.failed
            if load.failed:
                result.problems.append(f"{load.failed} requests failed: {load.errors()[:5]}")
            result.leaked = _settle(fleet)
            if result.leaked:
                result.problems.append(f"{result.leaked} containers leaked")
            configlog = fleet.etcd.get_keys(fleet.store.keys.config_log)
            if len(configlog) > CONFIG_LOG_KEEP:
                result.problems.append(f"{len(configlog)} config log entries kept "
                                       f"(bound {CONFIG_LOG_KEEP})")
            history = fleet.etcd.get_keys(fleet.store.keys.history("web"))
            if len(history) > KEEP_REVISIONS:
                result.problems.append(f"{len(history)} history entries kept "
                                       f"(keepRevisions {KEEP_REVISIONS})")
            last = result.samples[-1]
            if last.images > RETAIN_IMAGES + 1:
                result.problems.append(f"{last.images} images of {repo} on the engine "
                                       f"(retainImages {RETAIN_IMAGES})")
    finally:
        cluster.stop()
        subprocess.run(f"docker ps -aq --filter label={PROJECT_LABEL}={project} | "
                       "xargs -r docker rm -f", shell=True, capture_output=True)
    result.seconds = time.monotonic() - started
    result.slopes, growth = judge(result.samples)
    result.problems += growth
    return result
