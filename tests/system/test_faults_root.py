"""Faults that need root: the target OOM-killed in a memory cgroup, and the disk filling up.

- OOM: a child joins a 64 MiB memory cgroup (v1) and touches 400 MiB. The recording must hold the
  kill (exit signal 9 from wait4, the ``oom:mark_victim`` row naming the target when the kernel
  probes run), and the recorder must end by itself with a complete recording.
- Disk full: a 2 MiB tmpfs. The recorder must stop with exit code 6 (WriteError), one line on
  stderr, no traceback, and every batch flushed before the disk filled must stay readable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autoglm_trace.analysis.reader import Recording
from autoglm_trace.errors import WriteError
from tests.cli_helpers import clean_env, one_error_line, read_all

PY = sys.executable





@pytest.mark.root
def test_target_oom_killed_in_memory_cgroup(cli: list[str], tmp_path: Path) -> None:
    base = Path("/sys/fs/cgroup/memory")
    if not (base / "memory.limit_in_bytes").exists():
        pytest.skip("memory cgroup v1 is not mounted at /sys/fs/cgroup/memory")
    cg = base / f"autoglm-test-oom-{os.getpid()}"
    cg.mkdir()
    try:
        (cg / "memory.limit_in_bytes").write_text(str(64 << 20))
        if (cg / "memory.memsw.limit_in_bytes").exists():
            (cg / "memory.memsw.limit_in_bytes").write_text(str(64 << 20))
        hog = textwrap.dedent(
            f"""
            import os, time
            open('{cg}/tasks', 'w').write(str(os.getpid()))
            chunks = []
            for _ in range(400):           # 400 MiB, touched, in a 64 MiB cgroup
                b = bytearray(1 << 20)
                for i in range(0, len(b), 4096):
                    b[i] = 1
                chunks.append(b)
                time.sleep(0.002)
            print('not killed?!')
            """
        )
        out = tmp_path / "rec"
        r = subprocess.run([*cli, "record", "-q", "--json", "--no-gpu", "-o", str(out), "--", PY, "-c", hog],
                           capture_output=True, text=True, env=clean_env(), timeout=120)
        assert r.returncode == 7, r.stderr  # documented: recording complete, the started target failed
        rec = Recording(out)
        assert rec.complete
        assert rec.manifest["stop_reason"] == "target exited"
        assert rec.target["signal"] == signal.SIGKILL, rec.target
        # The kernel counted the OOM kill in this cgroup (independent of the recorder).
        ctl = (cg / "memory.oom_control").read_text()
        kills = dict(line.split() for line in ctl.splitlines()).get("oom_kill")
        if kills is not None:
            assert int(kills) >= 1, ctl
        samples = rec.table("proc_samples")
        root = rec.target["pid"]
        rss = [r for p, r in zip(samples.column("pid").to_pylist(), samples.column("rss_bytes").to_pylist())
               if p == root and r is not None]
        assert rss and max(rss) > 20 << 20  # the sampler saw it grow before the kill
        if rec.collectors.get("kernel", {}).get("status") == "ok":
            kills = rec.table("oom_kills")
            victims = dict(zip(kills.column("pid").to_pylist(), kills.column("in_target").to_pylist()))
            assert victims.get(root) is True, kills.to_pylist()
    finally:
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)


CHATTY = textwrap.dedent(
    """
    import os, time
    kids, me = [], os.getpid()
    for _ in range(60):       # 60 processes: 60 proc_samples rows per 10 ms interval
        pid = os.fork()
        if pid == 0:
            for _ in range(600):      # die with the parent (SIGKILLed by the failing recorder)
                time.sleep(0.1)
                if os.getppid() != me:
                    break
            os._exit(0)
        kids.append(pid)
    try:
        time.sleep(60)
    finally:
        for k in kids:
            os.kill(k, 9)
    """
)


@pytest.mark.root
def test_disk_full_is_a_clear_error_and_data_stays_readable(cli: list[str], tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "autoglm-test", str(mnt)], check=True)
    out = mnt / "rec"
    # Leave ~300 KiB free: recordings are compressed, so the sampler alone would take minutes to
    # fill even 2 MiB; a filler file makes the disk full within seconds of recording.
    st = os.statvfs(mnt)
    (mnt / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - (300 << 10)))
    p = None
    try:
        p = subprocess.Popen([*cli, "record", "-q", "--json", "--no-gpu", "--no-spans", "-i", "10",
                              "-o", str(out), "--", PY, "-c", CHATTY],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
                             start_new_session=True)
        try:
            _, stderr = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise AssertionError("recorder did not stop when the disk filled") from None
        assert p.returncode == WriteError.exit_code, stderr
        line = one_error_line(stderr)
        assert "No space left" in line or "space" in line.lower(), line
        # Everything flushed before the disk filled is readable.
        rec = Recording(out)
        rows = read_all(rec)
        assert rows.get("proc_samples", 0) > 0
        assert not rec.complete
        # The recorder did not leave its target behind.
        time.sleep(0.5)
        pid = rec.target["pid"]
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    finally:
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
