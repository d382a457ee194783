"""Target modes (cgroup, host), in-kernel fork following, and degrading with a stated reason."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kernel_harness import KernelRun

from autoglm_trace.probes import bpf_program, kernel_features
from autoglm_trace.target import TargetTree
from tests.foreign_user import SYSTEM_PYTHON, can_execute, package_copy, world_dir

pytestmark = [pytest.mark.root, pytest.mark.bpf]

MEMCG_ROOT = Path("/sys/fs/cgroup/memory")


def _rmdir_when_empty(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    path.rmdir()


def test_cgroup_mode_follows_children_forked_after_start(tmp_path):
    if not (MEMCG_ROOT / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory")
    cg = MEMCG_ROOT / f"autoglm-trace-test-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    outsider = subprocess.Popen(["/bin/sh", "-c", "while :; do sleep 0.01; done"])
    sh = subprocess.Popen(
        ["/bin/sh", "-c", "read x; for i in 1 2 3; do /bin/sleep 0.05; done; read y"],
        stdin=subprocess.PIPE, text=True,
    )
    run = None
    try:
        (cg / "cgroup.procs").write_text(str(sh.pid))
        target = TargetTree.for_cgroup(str(cg))
        assert target.pids() == [sh.pid]
        run = KernelRun(tmp_path / "rec", target, {"families": ["sched", "proc"]}).start()
        assert run.probes.info()["filter"] == "cgroup"
        assert sh.stdin is not None
        sh.stdin.write("go\n")
        sh.stdin.flush()
        time.sleep(0.6)
        rec = run.stop()
        run = None
    finally:
        if run is not None:
            run.stop()
        for p in (sh, outsider):
            p.kill()
            p.wait()
        _rmdir_when_empty(cg)

    forks = [r for r in rec.table("proc_events").to_pylist() if r["event"] == "fork"]
    kids = {r["pid"] for r in forks if r["ppid"] == sh.pid}
    assert len(kids) == 3, forks
    execs = {r["pid"] for r in rec.table("proc_events").to_pylist() if r["event"] == "exec"}
    assert kids <= execs
    exits = {r["pid"]: r for r in rec.table("proc_events").to_pylist() if r["event"] == "exit"}
    assert all(exits[k]["exit_code"] == 0 and exits[k]["signal"] is None for k in kids)
    sched_pids = {r["pid"] for r in rec.table("sched").to_pylist()}
    assert kids <= sched_pids  # forked after start, filtered in the kernel from their first switch
    assert outsider.pid not in sched_pids
    assert kids <= run_target_ever(target)


def run_target_ever(target: TargetTree) -> set[int]:
    return set(target.ever)


def test_host_mode_sees_other_processes(tmp_path):
    other = subprocess.Popen(["/bin/sh", "-c", "while :; do sleep 0.01; done"])
    try:
        run = KernelRun(tmp_path / "rec", TargetTree.for_host(), {"families": ["sched"], "bucket_ms": 50})
        run.start()
        time.sleep(0.4)
        rec = run.stop()
    finally:
        other.kill()
        other.wait()
    rows = rec.table("sched").to_pylist()
    assert other.pid in {r["pid"] for r in rows}
    assert os.getpid() in {r["pid"] for r in rows}
    assert all(r["bucket_ns"] == 50_000_000 for r in rows)


def test_missing_tracepoint_degrades_with_a_reason():

    fam = bpf_program.Family("bogus", 9, "none.c", (("sched", "no_such_tracepoint_here"),))
    reason = kernel_features.family_problem(fam)
    assert reason == "tracepoint sched:no_such_tracepoint_here not in this kernel"
    for name, ok, why in kernel_features.feature_report():
        assert ok, (name, why)


def test_without_root_start_refuses_with_a_fix(tmp_path):
    # A real unprivileged process (uid nobody), not a patched geteuid. With a venv nobody can use,
    # the full collector runs; when the checkout sits in a directory nobody cannot enter, the same
    # first check start() makes (kernel_features.base_problem: standard library only) runs from a
    # world-readable copy of the sources under the system interpreter.
    if can_execute(65534, 65534, sys.executable):
        code = (
            "from autoglm_trace.probes.kernel import KernelProbes\n"
            "from autoglm_trace.collector import CollectorUnavailable, SessionContext\n"
            "from autoglm_trace.target import TargetTree\n"
            "ctx = SessionContext(print, print, print, TargetTree.for_host())\n"
            "try:\n    KernelProbes().start(ctx)\nexcept CollectorUnavailable as e:\n    print('UNAVAILABLE', e)\n"
        )
        argv = [sys.executable, "-c", code]
    else:
        argv = None
    with world_dir() as d:
        if argv is None:
            argv = [SYSTEM_PYTHON, "-I", "-c", f"import sys; sys.path.insert(0, {str(package_copy(d))!r})\n"
                    "from autoglm_trace.probes.kernel_features import base_problem\n"
                    "print('UNAVAILABLE', base_problem())\n"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, user=65534, group=65534, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("UNAVAILABLE kernel probes need root"), r.stdout
