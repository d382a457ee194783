"""Overhead of the kernel probes on a context-switch-heavy workload.

Two processes ping-pong one byte over pipes (every round trip = 2 sleeps + 2 wakeups + 2 switches
per side, the worst case for scheduler probes). Rounds with and without KernelProbes (all
families, the ping-pong pair as target) are interleaved, and the ratio of round trips per second
is reported, with the mean wall time of one KernelProbes.sample() call.

    sudo .venv/bin/python bench/bench_kernel_probes.py [--rounds 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

from autoglm_trace.collector import SessionContext
from autoglm_trace.probes.kernel import KernelProbes
from autoglm_trace.target import TargetTree


def pingpong(seconds: float) -> tuple[int, int, int]:
    """Fork a ping-pong pair that starts when a byte arrives on its go pipe; returns (pid of the
    pair's parent, result fd, go fd)."""
    go_r, go_w = os.pipe()
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        child = os.fork()
        if child == 0:  # echo side
            while True:
                c = os.read(a_r, 1)
                if not c or c == b"q":
                    os._exit(0)
                os.write(b_w, c)
        os.read(go_r, 1)
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            os.write(a_w, b"x")
            os.read(b_r, 1)
            n += 1
        os.write(a_w, b"q")
        os.waitpid(child, 0)
        os.write(res_w, f"{n / seconds}".encode())
        os._exit(0)
    for fd in (go_r, a_r, a_w, b_r, b_w, res_w):
        os.close(fd)
    return pid, res_r, go_w


def run_round(seconds: float, traced: bool) -> tuple[float, list[float]]:
    pid, res_r, go_w = pingpong(seconds)
    sample_times: list[float] = []
    probes = None
    stop = threading.Event()
    if traced:
        target = TargetTree.for_pid(pid)
        ctx = SessionContext(lambda t, r: None, lambda t, c: None, lambda t, b: None, target, is_root=True)
        probes = KernelProbes()
        probes.start(ctx)

        def loop() -> None:
            while not stop.wait(0.1):
                t = time.perf_counter()
                probes.sample(time.monotonic_ns())
                sample_times.append(time.perf_counter() - t)

        th = threading.Thread(target=loop, daemon=True)
        th.start()
    os.write(go_w, b"g")
    os.close(go_w)
    os.waitpid(pid, 0)
    rate = float(os.read(res_r, 64).decode())
    os.close(res_r)
    if probes is not None:
        stop.set()
        th.join()
        probes.stop()
    return rate, sample_times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (BPF)", file=sys.stderr)
        return 2
    # The pair waits for its go byte, sent once the probes are attached (compile ~1 s).
    base, traced, samples = [], [], []
    for _ in range(args.rounds):
        base.append(run_round(args.seconds, False)[0])
        r, s = run_round(args.seconds, True)
        traced.append(r)
        samples += s
    b, t = statistics.median(base), statistics.median(traced)
    print(f"untraced round trips/s (median of {args.rounds}): {b:,.0f}  {[round(x) for x in base]}")
    print(f"traced   round trips/s (median of {args.rounds}): {t:,.0f}  {[round(x) for x in traced]}")
    print(f"traced / untraced: {t / b:.3f}")
    if samples:
        print(f"KernelProbes.sample(): mean {statistics.mean(samples) * 1e3:.2f} ms, "
              f"max {max(samples) * 1e3:.2f} ms over {len(samples)} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
