"""An inference-like, context-switch-heavy workload with a throughput figure.

Shape: ``--pairs`` pairs of processes ping-pong one byte over pipes (the request/response hand-offs
between an API server, a scheduler and workers: every hop is a sleep and a wakeup, i.e. two context
switches), while ``--decoders`` processes run a numpy matmul loop (the CPU-bound "decode" step that
competes with them for the run queue). Runs for a fixed ``--duration`` and prints one JSON object:

  {"duration_s", "round_trips", "round_trips_per_s", "decode_steps", "decode_steps_per_s",
   "ops_per_s", "switches", "switches_per_s", ...}

``ops_per_s`` (round trips + decode steps, per second) is the throughput the overhead benchmark
compares. The switch rate is measured, not assumed: the sum over every worker of the
``voluntary_ctxt_switches`` + ``nonvoluntary_ctxt_switches`` deltas in /proc/self/status
(fs/proc/array.c task_context_switch_counts), read by each worker at its start and end.

  .venv/bin/python bench/workload_pingpong.py --duration 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _switches() -> int:
    n = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                n += int(line.split()[1])
    return n


def _report(fd: int, **kv: float) -> None:
    os.write(fd, (json.dumps(kv) + "\n").encode())


def _pinger(rd: int, wr: int, end: float, work: int, out: int) -> None:
    s0 = _switches()
    n = 0
    buf = b"x"
    spin = range(work)
    # Check the clock every 256 round trips: a time call per hop would dominate.
    while True:
        for _ in range(256):
            os.write(wr, buf)
            os.read(rd, 1)
            for _ in spin:  # "request handling" between hand-offs (--work): lowers the switch rate
                pass
        n += 256
        if time.monotonic() >= end:
            break
    os.write(wr, b"q")  # tell the ponger to stop
    _report(out, round_trips=n, switches=_switches() - s0)


def _ponger(rd: int, wr: int, out: int) -> None:
    s0 = _switches()
    while True:
        b = os.read(rd, 1)
        if not b or b == b"q":
            break
        os.write(wr, b)
    _report(out, switches=_switches() - s0)


def _decoder(end: float, size: int, out: int) -> None:
    import numpy as np

    s0 = _switches()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((size, size), dtype=np.float32)
    x = rng.standard_normal((1, size), dtype=np.float32)
    n = 0
    while time.monotonic() < end:
        # One "token": a matvec through the weights, then a softmax-like normalisation.
        x = np.tanh(x @ w)
        n += 1
    _report(out, decode_steps=n, switches=_switches() - s0)


def run(duration: float, pairs: int, decoders: int, size: int, work: int = 0) -> dict[str, float]:
    # Single-threaded BLAS: the decode step is one runnable thread, like one worker per core.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    res_r, res_w = os.pipe()
    start = time.monotonic() + 0.2  # let every worker fork before the clock starts
    end = start + duration
    pids = []

    def spawn(fn, *args) -> None:  # type: ignore[no-untyped-def]
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(res_r)
                while time.monotonic() < start:
                    time.sleep(0.005)
                fn(*args, res_w)
            except BaseException as e:  # noqa: BLE001
                print(f"worker failed: {e}", file=sys.stderr)
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)

    for _ in range(pairs):
        a_r, a_w = os.pipe()  # pinger -> ponger
        b_r, b_w = os.pipe()  # ponger -> pinger
        spawn(_pinger, b_r, a_w, end, work)
        spawn(_ponger, a_r, b_w)
        for fd in (a_r, a_w, b_r, b_w):
            os.close(fd)
    for _ in range(decoders):
        spawn(_decoder, end, size)
    os.close(res_w)
    failed = 0
    for pid in pids:
        _, st = os.waitpid(pid, 0)
        failed += int(st != 0)
    t = time.monotonic() - start
    with os.fdopen(res_r) as f:
        parts = [json.loads(line) for line in f if line.strip()]
    tot = {k: sum(p.get(k, 0) for p in parts) for k in ("round_trips", "decode_steps", "switches")}
    return {
        "duration_s": round(t, 3),
        "pairs": pairs,
        "decoders": decoders,
        "matrix": size,
        "work": work,
        "workers_failed": failed,
        "round_trips": tot["round_trips"],
        "round_trips_per_s": round(tot["round_trips"] / duration, 1),
        "decode_steps": tot["decode_steps"],
        "decode_steps_per_s": round(tot["decode_steps"] / duration, 1),
        "ops_per_s": round((tot["round_trips"] + tot["decode_steps"]) / duration, 1),
        "switches": tot["switches"],
        "switches_per_s": round(tot["switches"] / duration, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--pairs", type=int, default=2, help="ping-pong process pairs (default 2)")
    p.add_argument("--decoders", type=int, default=1, help="numpy decode-loop processes (default 1)")
    p.add_argument("--matrix", type=int, default=256, help="decode weight matrix size (default 256)")
    p.add_argument("--work", type=int, default=0,
                   help="loop iterations of 'request handling' per round trip (default 0: pure hand-offs)")
    a = p.parse_args(argv)
    r = run(a.duration, a.pairs, a.decoders, a.matrix, a.work)
    print(json.dumps(r), flush=True)
    return 1 if r["workers_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
