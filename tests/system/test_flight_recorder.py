"""The flight recorder end to end: `autoglm-trace record --ring` as a real process.

* A real memcg OOM kill (cgroup v1, 100 MB limit, a child growing ~20 MB/s) while the flight recorder
  watches the whole host saves a snapshot that reads as an ordinary recording, with the kill and the
  victim's memory growth before it.
* SIGUSR1 saves a snapshot; retention (--keep) deletes the oldest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from autoglm_trace.analysis.reader import Recording

MEMCG_V1 = Path("/sys/fs/cgroup/memory")

GROWER = r"""
import time
hold = []
while True:
    hold.append(b"x" * (2 << 20))   # touched pages: 2 MiB every 100 ms, ~20 MB/s
    time.sleep(0.1)
"""


class Flight:
    """A running `record --ring`, its stderr collected in a file."""

    def __init__(self, cli: list[str], args: list[str], log: Path) -> None:
        self.log = log
        self._f = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*cli, "record", *args], stdout=subprocess.DEVNULL,
                                     stderr=self._f, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.text()
            if needle in t:
                return t
            if self.proc.poll() is not None:
                raise AssertionError(f"flight recorder exited ({self.proc.returncode}):\n{t}")
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not logged within {timeout} s:\n{self.text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._f.close()
        return self.proc.returncode


def _snapshots(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _wait_snapshots(d: Path, n: int, timeout: float, flight: Flight) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snaps = _snapshots(d)
        if len(snaps) >= n:
            return snaps
        time.sleep(0.2)
    raise AssertionError(f"{n} snapshot(s) not saved within {timeout} s; have {_snapshots(d)}:\n{flight.text()}")


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.slow
def test_memcg_oom_kill_saves_a_snapshot_with_the_victims_growth(cli: list[str], tmp_path: Path):
    if not (MEMCG_V1 / "memory.limit_in_bytes").exists():
        pytest.skip("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    out = tmp_path / "flight"
    cg = MEMCG_V1 / f"autoglm-flight-test-{uuid.uuid4().hex[:8]}"
    flight = Flight(cli, ["--ring", "30s", "-o", str(out), "--tail", "2", "--cooldown", "0", "--no-gpu"],
                    tmp_path / "flight.log")
    child: subprocess.Popen | None = None
    try:
        flight.wait_for("collectors running", 60)
        cg.mkdir()
        (cg / "memory.limit_in_bytes").write_text(str(100 << 20))
        (cg / "memory.swappiness").write_text("0")
        procs = str(cg / "cgroup.procs")

        def join_cgroup() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        t_start = time.monotonic_ns()
        child = subprocess.Popen([sys.executable, "-c", GROWER], preexec_fn=join_cgroup)  # noqa: PLW1509
        child.wait(timeout=60)
        # Ground truth from the kernel, independent of the tracer: killed by SIGKILL, the memcg
        # recorded an OOM kill.
        assert child.returncode == -signal.SIGKILL
        oom_control = (cg / "memory.oom_control").read_text()
        assert "oom_kill 1" in oom_control or "oom_kill " in oom_control
        # Other tests may OOM-kill on this host meanwhile: find the snapshot holding our victim.
        deadline = time.monotonic() + 30
        snap = None
        while time.monotonic() < deadline and snap is None:
            for p in _snapshots(out) if out.exists() else []:
                if not p.name.endswith("-oom") and "-oom-" not in p.name:
                    continue
                r = Recording(p)
                if child.pid in r.table("oom_kills").column("pid").to_pylist():
                    snap = p
            time.sleep(0.3)
        assert snap is not None, f"no snapshot with victim {child.pid}:\n{flight.text()}"
        assert f"OOM kill of pid {child.pid}" in flight.text()
    finally:
        rc = flight.stop()
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        if cg.exists():
            for _ in range(50):
                try:
                    cg.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
    assert rc == 0, flight.text()

    rec = Recording(snap)
    m = rec.manifest
    assert rec.complete and m["trigger"]["kind"] == "oom"
    assert str(child.pid) in m["trigger"]["detail"] or any(str(child.pid) in a["detail"] for a in m["trigger"]["also"])
    kills = rec.table("oom_kills").to_pylist()
    victim = next(k for k in kills if k["pid"] == child.pid)
    assert victim["memcg_limit_bytes"] in (None, 100 << 20)
    assert victim["anon_rss_bytes"] >= 60 << 20  # it was killed near its 100 MB limit
    # The victim's memory growth before the kill, sampled by the host-mode top-RSS sampler.
    ps = rec.table("proc_samples")
    mine = sorted((r["ts_ns"], r["rss_bytes"]) for r in ps.to_pylist() if r["pid"] == child.pid)
    assert len(mine) >= 3, mine
    assert all(ts <= victim["ts_ns"] for ts, _ in mine)
    rss = [r for _, r in mine]
    assert rss[-1] - rss[0] >= 30 << 20, rss
    assert sum(b > a for a, b in zip(rss, rss[1:])) >= len(rss) - 2  # steady growth
    # Growth rate close to what the child does (~20 MB/s; generous bounds for a loaded 2-core VM).
    rate = (mine[-1][1] - mine[0][1]) / ((mine[-1][0] - mine[0][0]) / 1e9)
    assert 5e6 < rate < 60e6, rate
    procs = {r["pid"]: r for r in rec.table("processes").to_pylist()}
    assert child.pid in procs and "python" in (procs[child.pid]["comm"] or "")
    # The ring's span: the snapshot starts before the child started (30 s ring, the child lived ~5 s).
    assert rec.start_ns <= t_start
    assert rec.end_ns >= victim["ts_ns"]
    # Host counters cover the whole window too.
    hs = rec.table("host_samples").column("ts_ns").to_pylist()
    assert min(hs) <= t_start and max(hs) >= victim["ts_ns"]
    assert json.loads((snap / "manifest.json").read_text())["flight"]["ring_s"] == 30
    # An ordinary recording: the post-mortem and the report read it unchanged.
    r = subprocess.run([*cli, "oom", str(snap), "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    kill = next(k for k in json.loads(r.stdout)["kills"] if k["pid"] == child.pid)
    assert 5e6 < kill["growth_bytes_per_s"] < 60e6, kill
    r = subprocess.run([*cli, "report", str(snap), "-o", str(tmp_path / "report.html")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "report.html").stat().st_size > 10_000


@pytest.mark.root
@pytest.mark.slow
def test_sigusr1_snapshots_and_retention_keeps_the_newest(cli: list[str], tmp_path: Path):
    out = tmp_path / "flight"
    # Leftovers of a previous run in the same directory count for retention; a foreign directory
    # is never touched.
    out.mkdir()
    (out / "not-a-snapshot").mkdir()
    flight = Flight(cli, ["--ring", "20s", "-o", str(out), "--tail", "0.5", "--keep", "2", "--no-bpf", "--no-gpu",
                     "--host"], tmp_path / "flight.log")
    try:
        flight.wait_for("collectors running", 30)
        saved: list[Path] = []
        for i in range(3):
            t_signal = time.monotonic_ns()
            time.sleep(1.1)  # distinct second-resolution names are not required, but readable logs
            flight.proc.send_signal(signal.SIGUSR1)
            flight.wait_for(f"saved {out}", 20)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and flight.text().count(f"saved {out}") < i + 1:
                time.sleep(0.1)
            line = [ln for ln in flight.text().splitlines() if f"saved {out}" in ln][i]
            saved.append(Path(line.split("saved ", 1)[1].split(" (", 1)[0]))
            rec = Recording(saved[-1])
            assert rec.manifest["trigger"]["kind"] == "signal" and saved[-1].name.endswith("-signal")
            assert rec.complete
            hs = rec.table("host_samples").column("ts_ns").to_pylist()
            # It holds data from before the signal (the ring) and the tail after it.
            assert min(hs) < t_signal < max(hs)
        time.sleep(0.5)
    finally:
        rc = flight.stop()
    assert rc == 0, flight.text()
    remaining = [p for p in _snapshots(out) if p.name != "not-a-snapshot"]
    assert remaining == saved[1:], (remaining, saved)
    assert not saved[0].exists()
    assert (out / "not-a-snapshot").is_dir()
    assert f"retention: deleted {saved[0]}" in flight.text()
