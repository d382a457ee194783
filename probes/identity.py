"""Who every process on the host is, as operators name it: cgroup path, user, pod and container names.

A culprit found after the fact (a neighbour that preempted the server, a writer on its disk) is a pid
in the kernel tables; by the time someone reads the analysis it may be gone, and the analysis host
may not be the recorded one. So the recorder notes each process's identity while it lives: once a
second it lists ``/proc`` (through the project's /proc root) and, for each process not seen before
(pid + start time), reads

* ``/proc/PID/stat`` (comm, start time), ``/proc/PID/status`` (real uid) -- the user name is
  resolved here, on the recorded host (``pwd``), since uids mean nothing elsewhere;
* ``/proc/PID/cgroup`` (the v1 memory controller's path, else the v2 path) -- where it runs:
  a Kubernetes pod and container, a Docker / Podman / containerd container, a systemd unit
  (parsed when reading, ``analysis.containers``);
* for a Kubernetes container, the pod's name from ``/proc/PID/root/etc/hostname`` (kubelet sets
  the hostname to the pod name unless the pod shares the host's network: then it is the node's
  name and is left out); for a Docker container, its name from
  ``/var/lib/docker/containers/<id>/config.v2.json``. No kubelet, CRI or Docker API is asked.

Rows go to ``process_identities``. Cost: one ``listdir`` of /proc per second plus three small reads
per *new* process (at most ``max_new`` a scan); a process that lives less than a second may be
missed and is then named by pid and comm alone.
"""

from __future__ import annotations

import json
import os
import pwd
import re
from typing import Any

from autoglm_trace import procfs
from autoglm_trace.collector import Collector, SessionContext

DEFAULT_EVERY_MS = 1000
MAX_NEW = 4000
_CID = re.compile(r"([0-9a-f]{64})")
DOCKER_ROOT = os.environ.get("AUTOGLM_TRACE_DOCKER_ROOT", "/var/lib/docker")


def user_name(uid: int | None, cache: dict[int, str | None]) -> str | None:
    if uid is None:
        return None
    if uid not in cache:
        try:
            cache[uid] = pwd.getpwuid(uid).pw_name
        except (KeyError, OverflowError):
            cache[uid] = None
    return cache[uid]


def _small(path: str, limit: int = 1 << 16) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def pod_name(pid: int, cgroup: str) -> str | None:
    if "kubepods" not in cgroup:
        return None
    name = _small(str(procfs.proc_path(pid, "root", "etc", "hostname")), 256)
    if not name:
        return None
    name = name.strip()
    if not name or name == os.uname().nodename:  # hostNetwork pod: the node's name, not the pod's
        return None
    return name[:253]


def container_name(cgroup: str) -> str | None:
    if "docker" not in cgroup:
        return None
    m = _CID.search(cgroup)
    if not m:
        return None
    text = _small(os.path.join(DOCKER_ROOT, "containers", m.group(1), "config.v2.json"), 1 << 20)
    if not text:
        return None
    try:
        name = json.loads(text).get("Name")
    except (ValueError, AttributeError):
        return None
    return name.lstrip("/")[:128] if isinstance(name, str) and name else None


def identity(pid: int, ts_ns: int, users: dict[int, str | None]) -> dict[str, Any] | None:
    try:
        st = procfs.read_pid_stat(pid)
        status = procfs.read_pid_status(pid)
    except (procfs.ProcGone, OSError, ValueError, IndexError):
        return None
    cg = procfs.read_pid_cgroup(pid)
    uid = procfs.uid_from_status(status)
    return {"ts_ns": ts_ns, "pid": pid, "comm": st["comm"], "uid": uid, "user": user_name(uid, users),
            "cgroup": cg or None, "pod_name": pod_name(pid, cg) if cg else None,
            "container_name": container_name(cg) if cg else None, "start_ticks": st["starttime_ticks"]}


class IdentitySampler(Collector):
    name = "identity"
    tables = ("process_identities",)

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__()
        opts = options or {}
        self.every_ns = int(float(opts.get("identity_every_ms", DEFAULT_EVERY_MS)) * 1e6)
        self.max_new = int(opts.get("identity_max_new", MAX_NEW))
        self.seen: dict[int, int] = {}  # pid -> start ticks
        self.users: dict[int, str | None] = {}
        self.last_ns = 0
        self.rows = 0

    def start(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.sample(0)

    def sample(self, now_ns: int) -> None:
        if self.last_ns and now_ns - self.last_ns < self.every_ns:
            return
        import time

        ts = time.monotonic_ns()
        self.last_ns = now_ns or ts
        try:
            names = os.listdir(procfs.PROC_ROOT)
        except OSError:
            return
        out = []
        alive = set()
        for n in names:
            if not n.isdigit():
                continue
            pid = int(n)
            alive.add(pid)
            if pid in self.seen or len(out) >= self.max_new:
                continue
            row = identity(pid, ts, self.users)
            if row is None:
                continue
            self.seen[pid] = row.pop("start_ticks")
            out.append(row)
        for pid in [p for p in self.seen if p not in alive]:  # a reused pid is a new process
            del self.seen[pid]
        if out and self.ctx is not None:
            self.ctx.emit("process_identities", out)
            self.rows += len(out)

    def stop(self) -> None:
        if self.ctx is not None:
            self.sample(self.last_ns + self.every_ns)  # processes that started since the last scan

    def status(self) -> dict[str, Any]:
        return {"events": self.rows, "lost": 0}
