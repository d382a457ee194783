"""Block I/O attributed to the issuing process, with its D-state time."""

from __future__ import annotations

import pytest
from kernel_harness import GatedChild, KernelRun

from autoglm_trace.target import TargetTree

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.slow]

CHUNK = 64 * 1024
CHUNKS = 128  # 8 MiB written and read back with O_DIRECT


def test_direct_io_recorded_with_pid_and_dstate(tmp_path):
    path = tmp_path / "direct.bin"
    child = GatedChild(f"""
import mmap
buf = mmap.mmap(-1, {CHUNK})  # page-aligned, as O_DIRECT needs
buf.write(os.urandom({CHUNK}))
fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
for i in range({CHUNKS}):
    os.pwritev(fd, [buf], i * {CHUNK})
    os.fsync(fd)
for i in range({CHUNKS}):
    os.preadv(fd, [buf], i * {CHUNK})
os.close(fd)
""")
    run = KernelRun(tmp_path / "rec", TargetTree.for_pid(child.pid), {"families": ["io", "sched", "proc"]})
    try:
        run.start()
        child.release()
        child.wait_done()
        rec = run.stop()
    finally:
        child.kill()
        run.probes.stop()

    io = rec.table("block_io").to_pylist()
    mine = [r for r in io if r["pid"] == child.pid]
    assert mine, f"no block requests attributed to {child.pid}: {[(r['pid'], r['comm']) for r in io][:10]}"
    assert all(r["in_target"] for r in mine)
    assert all(":" in r["dev"] for r in mine)
    reads = sum(r["bytes"] for r in mine if r["op"] == "R")
    writes = sum(r["bytes"] for r in mine if r["op"] == "W")
    # O_DIRECT bypasses the page cache: every byte reaches the device from this pid.
    assert reads >= CHUNK * CHUNKS, reads
    assert writes >= CHUNK * CHUNKS, writes
    for r in mine:
        assert r["count"] > 0 and r["lat_sum_ns"] > 0 and r["lat_max_ns"] <= r["lat_sum_ns"]
        assert sum(r["lat_hist"]) == r["count"]

    sched = [r for r in rec.table("sched").to_pylist() if r["pid"] == child.pid]
    assert sum(r["offcpu_dstate_ns"] for r in sched) > 0
