"""A neighbour inside a cgroup laid out like a Kubernetes pod's is named by its pod and container.

Real v1 cgroup directories (memory and cpu controllers) named ``kubepods/burstable/pod<uid>/<id>``
are created, a CPU hog running as user ``nobody`` is moved into them, and a pinned CPU-bound target
is recorded beside it. The recorder notes the hog's cgroup path and user (process_identities); the
analysis names the culprit ``pod <uid 8>/<container id 12>`` with its user. The directories are
removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from autoglm_trace.analysis.culprits import cpu_culprits
from autoglm_trace.analysis.diagnosis import culprit_sentence
from autoglm_trace.analysis.reader import Recording
from tests.conftest import autoglm_trace_cmd

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.slow]

CGROUP_V1 = Path("/sys/fs/cgroup")
TARGET = """
import os, sys, time
os.sched_setaffinity(0, [int(sys.argv[1])])
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    t = time.thread_time() + 0.02
    while time.thread_time() < t:
        pass
    time.sleep(0.01)
"""
HOG = """
import os, sys, time
os.sched_setaffinity(0, [int(sys.argv[1])])
open("/proc/self/comm", "w").write("trainer")
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
"""


@pytest.fixture
def pod_cgroup():
    if not (CGROUP_V1 / "memory" / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 memory controller")
    pod_uid = str(uuid.uuid4())
    cid = uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex, as containerd / docker ids are
    rel = Path("kubepods") / "burstable" / f"pod{pod_uid}" / cid
    made: list[Path] = []
    dirs = []
    for ctrl in ("memory", "cpu"):
        root = CGROUP_V1 / ctrl
        if not (root / "cgroup.procs").exists():
            continue
        d = root
        for part in rel.parts:
            d = d / part
            if not d.exists():
                d.mkdir()
                made.append(d)
        dirs.append(d)
    yield {"pod_uid": pod_uid, "cid": cid, "dirs": dirs, "path": "/" + str(rel)}
    for d in reversed(made):  # deepest first; only what this test created
        for _ in range(50):
            try:
                for p in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(p), signal.SIGKILL)
                d.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    assert not any(d.exists() for d in made)


def test_neighbour_in_a_pod_cgroup_is_named_by_pod_and_container(tmp_path, pod_cgroup):
    cpu = 0
    rec = tmp_path / "rec"
    nobody = pwd.getpwnam("nobody")
    recorder = subprocess.Popen([*autoglm_trace_cmd(), "record", "-o", str(rec), "--no-gpu", "-q", "--",
                                 sys.executable, "-c", TARGET, str(cpu), "10"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hog = None
    try:
        time.sleep(4)
        assert recorder.poll() is None, recorder.communicate()

        def demote() -> None:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)

        hog = subprocess.Popen([sys.executable, "-c", HOG, str(cpu), "5"], preexec_fn=demote, cwd="/")
        t_hog = time.monotonic_ns()
        for d in pod_cgroup["dirs"]:
            (d / "cgroup.procs").write_text(str(hog.pid))
        hog.wait(timeout=30)
        t_end = time.monotonic_ns()
        _, err = recorder.communicate(timeout=90)
        assert recorder.returncode == 0, err
    finally:
        for p in (hog, recorder):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    r = Recording(rec)
    ids = {row["pid"]: row for row in r.table("process_identities").to_pylist()}
    assert hog.pid in ids, "the hog's identity was not recorded"
    assert ids[hog.pid]["cgroup"] == pod_cgroup["path"] and ids[hog.pid]["user"] == "nobody"
    found = cpu_culprits(r, t_hog, t_end, 100_000_000)
    mine = [c for c in found["culprits"] if c["pid"] == hog.pid]
    assert mine, json.dumps(found, indent=1, default=str)
    c = mine[0]
    assert c["container"]["runtime"] == "kubernetes"
    assert c["container"]["pod_uid"] == pod_cgroup["pod_uid"]
    assert c["container"]["container_id"] == pod_cgroup["cid"]
    assert c["where"] == f"pod {pod_cgroup['pod_uid'][:8]}/{pod_cgroup['cid'][:12]}"
    assert c["user"] == "nobody"
    s = culprit_sentence("cpu_contention", c)
    assert f"pod {pod_cgroup['pod_uid'][:8]}/{pod_cgroup['cid'][:12]} (pid {hog.pid} `trainer`, user nobody)" in s
