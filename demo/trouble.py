"""Trouble the demo server makes for itself: contention from its own processes and threads.

Unlike the noisy neighbours of ``demo/hog.py`` (siblings, outside the recorded tree), these are started
by the server, so a recording sees them inside the target -- the common case in real inference
servers (a preprocessing worker the API server forked, a background thread holding the GIL, a lock
held while a snapshot is written):

* ``child-cpu``   a CPU-bound child process (comm ``prep-worker``, three hashing threads) on the
                  server's CPUs;
* ``child-io``    a child process (comm ``ckpt-writer``) writing + fsyncing on the server's disk;
* ``gil-thread``  a background thread of the server (``gil-hog``) running pure-Python work: it holds
                  the GIL, the decode threads wait for it;
* ``lock-holder`` a background thread (``kv-snapshot``) holding the scheduler lock every decode step
                  takes, sleeping under it as if writing a snapshot.

Children die with the server (PR_SET_PDEATHSIG); threads are daemons.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

KINDS = ("child-cpu", "child-io", "gil-thread", "lock-holder")

_CHILD = """
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None)
libc.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG: die with the server
libc.prctl(15, {comm!r}.encode(), 0, 0, 0)  # PR_SET_NAME
if os.getppid() == 1:
    sys.exit(0)
{body}
"""

# A preprocessing pool: three threads hashing in C (hashlib drops the GIL for large buffers), so the
# one process keeps three threads runnable on the server's CPUs.
_CPU_BODY = """
import hashlib, threading
buf = bytes(1 << 20)
def spin():
    while True:
        hashlib.sha256(buf).digest()
for _ in range(2):
    threading.Thread(target=spin, daemon=True).start()
spin()
"""

_IO_BODY = """
from autoglm_trace.demo.hog import io_hog
io_hog({directory!r}, 1e9, comm="ckpt-writer")
"""


def _child(comm: str, body: str) -> subprocess.Popen[bytes]:
    code = _CHILD.format(comm=comm, body=body)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)


def _gil_hog(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(5000):  # pure Python: the GIL is held all the while
            x = (x + i * i) % 1000003


def _lock_holder(lock: threading.Lock, stop: threading.Event, hold_s: float = 0.04, gap_s: float = 0.01) -> None:
    while not stop.is_set():
        with lock:
            time.sleep(hold_s)  # "writing a snapshot" under the lock (GIL released)
        time.sleep(gap_s)


def start(kind: str, server: Any, duration_s: float | None = None) -> str:
    """Start ``kind`` for ``server`` (a DemoServer), for ``duration_s`` (None: until the server stops);
    returns what was started, for the log."""
    stop = threading.Event()
    server.troubles.append(stop)
    what = _start(kind, server, stop)
    if duration_s is not None:
        t = threading.Timer(duration_s, stop.set)
        t.daemon = True
        t.start()
        what += f" for {duration_s:.1f} s"
    return what


def _start(kind: str, server: Any, stop: threading.Event) -> str:
    if kind in ("child-cpu", "child-io"):
        if kind == "child-cpu":
            p = _child("prep-worker", _CPU_BODY)
            what = f"child process {p.pid} (prep-worker) spinning on the server's CPUs"
        else:
            directory = Path(server.journal_path).parent if server.journal_path else Path("/var/tmp")
            p = _child("ckpt-writer", _IO_BODY.format(directory=str(directory)))
            what = f"child process {p.pid} (ckpt-writer) writing + fsyncing in {directory}"
        server.children.append(p)
        threading.Thread(target=_reap_when, args=(stop, p), daemon=True).start()
        return what
    if kind == "gil-thread":
        t = threading.Thread(target=_gil_hog, args=(stop,), name="gil-hog", daemon=True)
        t.start()
        return f"thread {t.native_id} (gil-hog) running pure-Python work"
    if kind == "lock-holder":
        t = threading.Thread(target=_lock_holder, args=(server.step_lock, stop), name="kv-snapshot", daemon=True)
        t.start()
        return f"thread {t.native_id} (kv-snapshot) holding the scheduler lock 40 ms of every 50 ms"
    raise ValueError(f"unknown trouble {kind!r}")


def _reap_when(stop: threading.Event, p: subprocess.Popen[bytes]) -> None:
    stop.wait()
    if p.poll() is None:
        p.kill()
    p.wait()


def stop_all(server: Any) -> None:
    for ev in server.troubles:
        ev.set()
    for p in server.children:
        if p.poll() is None:
            p.kill()
            p.wait()
