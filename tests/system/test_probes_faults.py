"""Page faults against /proc/PID/stat minflt / majflt."""

from __future__ import annotations

import os

import pytest
from kernel_harness import GatedChild, KernelRun, stat_faults

from autoglm_trace.target import TargetTree

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.slow]

PAGES = 20000  # ~78 MiB of fresh anonymous memory, one write per page


def _faults(rec, pid):
    rows = [r for r in rec.table("faults").to_pylist() if r["pid"] == pid]
    assert rows, "no fault rows for the child"
    return sum(r["faults"] for r in rows), sum(r["major"] for r in rows)


def test_minor_faults_touching_fresh_pages(tmp_path):
    child = GatedChild(f"""
import mmap
m = mmap.mmap(-1, {PAGES} * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(0, {PAGES} * 4096, 4096):
    m[i] = 1
""")
    run = KernelRun(tmp_path / "rec", TargetTree.for_pid(child.pid), {"families": ["faults", "proc"]})
    try:
        run.start()
        min0, maj0 = stat_faults(child.pid)
        child.release()
        child.wait_done()
        rec = run.stop()
        min1, maj1 = stat_faults(child.pid)
    finally:
        child.kill()
        run.probes.stop()
    faults, major = _faults(rec, child.pid)
    minor = faults - major
    dmin = min1 - min0
    assert dmin >= PAGES
    assert minor >= PAGES
    assert abs(minor - dmin) <= 0.05 * dmin, (minor, dmin)
    assert major == maj1 - maj0


def test_major_faults_after_drop_caches(tmp_path):
    # A file on a block-backed filesystem (not tmpfs), read through mmap after the page cache
    # was dropped: each fault that has to wait for I/O is a major fault.
    path = tmp_path / "data.bin"
    size = 32 << 20
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
    child = GatedChild(f"""
import mmap, random
fd = os.open({str(path)!r}, os.O_RDONLY)
# No readahead: every page that is not cached costs its own major fault.
m = mmap.mmap(fd, {size}, prot=mmap.PROT_READ)
m.madvise(mmap.MADV_RANDOM)
idx = list(range(0, {size}, 4096)); random.shuffle(idx)
s = 0
for i in idx:
    s += m[i]
""")
    run = KernelRun(tmp_path / "rec", TargetTree.for_pid(child.pid), {"families": ["faults", "proc"]})
    try:
        run.start()
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        min0, maj0 = stat_faults(child.pid)
        child.release()
        child.wait_done()
        rec = run.stop()
        min1, maj1 = stat_faults(child.pid)
    finally:
        child.kill()
        run.probes.stop()
    faults, major = _faults(rec, child.pid)
    dmaj = maj1 - maj0
    assert dmaj > 100, dmaj  # the scenario really produced major faults
    assert major == dmaj, (major, dmaj)
    assert faults - major >= 0
    assert abs((faults - major) - (min1 - min0)) <= max(10, 0.05 * (min1 - min0))
