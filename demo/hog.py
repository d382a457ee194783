"""Noisy neighbours for the demo: processes that are *not* the server and hurt it anyway.

Started beside the recorder (``autoglm-trace demo hog ...``), never as the server's children, so a
recording shows them as what they are: another process (comm ``noisy-hog``) taking the server's CPUs,
filling its disk queue, or squeezing its memory cgroup.

* ``cpu_hog``: one busy-looping process per CPU, each pinned to its CPU.
* ``io_hog``: writes and fsyncs a file in a directory on the server's disk, round and round.
* ``memory_balloon``: joins a v1 memory cgroup and grows anonymous memory until only ``keep_mb`` of the
  limit is left for everything else; with no swap the kernel can only take the server's file-backed
  pages (its mmapped weights), which come back as major faults. It shrinks again if the room gets too
  small, so it squeezes without provoking the OOM killer.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import signal
import time
from pathlib import Path

COMM = "noisy-hog"
PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1


def _prctl(option: int, arg: int | bytes) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def set_comm(name: str = COMM) -> None:
    """The kernel's comm (what sched_switch, /proc/PID/comm and the recording show)."""
    _prctl(PR_SET_NAME, name.encode()[:15])


def _die_with_parent() -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _fork_children(n: int, body) -> list[int]:  # type: ignore[no-untyped-def]
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _die_with_parent()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                body(i)
            except BaseException:  # noqa: BLE001 - a child never returns into the parent's code
                code = 1
            os._exit(code)
        pids.append(pid)
    return pids


def _wait_all(pids: list[int], deadline: float) -> None:
    def term(*_a: object) -> None:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)

    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGINT, term)
    try:
        while pids:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                pids = [p for p in pids if p != pid]
                continue
            if time.monotonic() > deadline + 2:
                term()
            time.sleep(0.05)
    finally:
        term()


def cpu_hog(cpus: list[int], duration_s: float) -> int:
    set_comm()
    deadline = time.monotonic() + duration_s

    def spin(i: int) -> None:
        os.sched_setaffinity(0, [cpus[i]])
        set_comm()
        x = 0
        while time.monotonic() < deadline:
            for _ in range(20000):
                x += 1

    _wait_all(_fork_children(len(cpus), spin), deadline)
    return 0


def io_hog(directory: str, duration_s: float, chunk_mb: int = 4, file_mb: int = 64, comm: str = COMM) -> int:
    set_comm(comm)
    deadline = time.monotonic() + duration_s
    path = Path(directory) / f".noisy-hog-{os.getpid()}.dat"
    chunk = os.urandom(1 << 20) * chunk_mb
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    stop = False

    def on_term(*_a: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        written = 0
        while not stop and time.monotonic() < deadline:
            os.write(fd, chunk)
            os.fsync(fd)
            written += len(chunk)
            if written >= file_mb << 20:
                os.lseek(fd, 0, os.SEEK_SET)
                written = 0
                # Drop the file's cache so the next round writes real blocks again.
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
    return 0


def memcg_stat(path: str) -> dict[str, int]:
    out = {}
    for line in Path(path, "memory.stat").read_text().splitlines():
        k, _, v = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[k] = int(v)
    return out


def memcg_limit(path: str) -> int:
    return int(Path(path, "memory.limit_in_bytes").read_text())


def memory_balloon(memcg: str, duration_s: float, keep_mb: int = 16, step_mb: int = 4) -> int:
    """Hold the cgroup's anonymous memory at ``limit - keep_mb`` for ``duration_s``."""
    set_comm()
    with open(os.path.join(memcg, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + duration_s
    chunks: list[mmap.mmap] = []
    step = step_mb << 20
    keep = keep_mb << 20
    fill = b"\x5a" * step
    stop = False

    def on_term(*_a: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while not stop and time.monotonic() < deadline:
        try:
            st = memcg_stat(memcg)
            room = memcg_limit(memcg) - st.get("total_rss", st.get("rss", 0)) - st.get("total_shmem", 0)
        except OSError:
            break
        if room > keep + step:
            m = mmap.mmap(-1, step, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            m.write(fill)  # touch every page: charged now
            chunks.append(m)
            continue
        if room < keep // 2 and chunks:
            chunks.pop().close()
        time.sleep(0.05)
    for m in chunks:
        m.close()
    return 0
