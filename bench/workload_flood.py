"""Event floods for the capacity benchmark, at a paced rate (0: as fast as possible).

  --kind fork      processes fork a child that exits at once: fork + exit events (perf buffer path)
  --kind threads   threads started and ended: thread fork/exit events
  --kind faults    pages mmap'd, touched and unmapped: minor faults (kernel-aggregated path)

Prints one JSON object: {"kind", "rate_asked", "events_done", "rate_done", "duration_s"}; events are
forks, threads or touched pages. ``--workers`` processes share the rate.

  .venv/bin/python bench/workload_flood.py --kind fork --rate 2000 --duration 5
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
import threading
import time

BATCH = 50


def _fork_one() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _thread_one() -> None:
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()


_PAGES = 256
_BUF_LEN = _PAGES * mmap.PAGESIZE


def _faults_batch() -> int:
    m = mmap.mmap(-1, _BUF_LEN)
    for i in range(0, _BUF_LEN, mmap.PAGESIZE):
        m[i] = 1
    m.close()
    return _PAGES


def worker(kind: str, rate: float, end: float, out: int) -> None:
    done = 0
    t0 = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if rate > 0:
            ahead = done - (now - t0) * rate
            if ahead > 0:
                time.sleep(min(ahead / rate, end - now))
                continue
        if kind == "faults":
            done += _faults_batch()
            continue
        for _ in range(BATCH):
            (_fork_one if kind == "fork" else _thread_one)()
        done += BATCH
    os.write(out, (json.dumps({"done": done}) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=("fork", "threads", "faults"), default="fork")
    p.add_argument("--rate", type=float, default=0, help="events/s over all workers (0: unpaced)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    r, w = os.pipe()
    start = time.monotonic()
    end = start + a.duration
    pids = []
    for _ in range(a.workers):
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                worker(a.kind, a.rate / a.workers, end, w)
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(w)
    for pid in pids:
        os.waitpid(pid, 0)
    took = time.monotonic() - start
    with os.fdopen(r) as f:
        done = sum(json.loads(line)["done"] for line in f if line.strip())
    print(json.dumps({"kind": a.kind, "rate_asked": a.rate, "events_done": done,
                      "rate_done": round(done / took, 1), "duration_s": round(took, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
