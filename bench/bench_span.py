"""Cost of the span API in ns per span: with no recorder listening, and with a SpanReceiver listening.

    .venv/bin/python bench/bench_span.py [--n 200000] [--repeat 5]

Prints a Markdown table (best of ``--repeat`` runs of ``--n`` spans each, minus nothing: the numbers
include the Python ``with`` statement itself; the empty-loop and ``contextlib.nullcontext`` rows give
the floor). The spans come from a child process (the "server"); the SpanReceiver runs in this process
(the "recorder") with a sampling thread draining it every 100 ms, as in ``record``. A tight loop
produces spans faster than the receiving thread drains a Unix datagram queue
(``net.unix.max_dgram_qlen``, 10 by default), so the burst rows report how many were dropped (counted,
never blocking); the paced rows send 5,000 and 20,000 spans/s, busy servers' rates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time

from autoglm_trace import span_client as sc
from autoglm_trace.collector import SessionContext
from autoglm_trace.probes.span_receiver import SpanReceiver
from autoglm_trace.target import TargetTree


def best_ns(fn, n: int, repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn(n)
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def loop_empty(n: int) -> None:
    for _ in range(n):
        pass


def loop_nullcontext(n: int) -> None:
    nc = contextlib.nullcontext()
    for _ in range(n):
        with nc:
            pass


def loop_span(n: int) -> None:
    span = sc.span
    for _ in range(n):
        with span("generate"):
            pass


def loop_span_full(n: int) -> None:
    span, mark = sc.span, sc.mark_first_token
    for i in range(n):
        with span("generate", prompt_tokens=128, model="m") as s:
            mark()
            s.set(output_tokens=i & 255)


@sc.traced("decorated")
def _decorated() -> None:
    pass


def loop_traced(n: int) -> None:
    f = _decorated
    for _ in range(n):
        f()


def loop_paced(n: int, rate: float = 5000.0) -> None:
    span = sc.span
    period = 1.0 / rate
    t = time.perf_counter()
    for _ in range(n):
        with span("generate"):
            pass
        t += period
        while time.perf_counter() < t:
            pass


def client(n: int, repeat: int) -> dict:
    """Run in the target process: the no-recorder rows, or (with the socket in the environment)
    the recording rows."""
    rows: list[tuple[str, str, float, str]] = []
    listening = sc.enabled()
    cases = (('with span("generate")', loop_span),
             ("span + kwargs + mark_first_token + set", loop_span_full),
             ("@traced function call", loop_traced))
    if not listening:
        rows.append(("baseline", "empty loop iteration", best_ns(loop_empty, n, repeat), ""))
        rows.append(("baseline", "with nullcontext()", best_ns(loop_nullcontext, n, repeat), ""))
        for label, fn in cases:
            rows.append(("no recorder", label, best_ns(fn, n, repeat), ""))
        return {"rows": rows}
    for label, fn in cases:
        before = dict(sc.stats())
        ns = best_ns(fn, n, repeat)
        sc.flush()
        st = sc.stats()
        sent, dropped = st["sent"] - before["sent"], st["dropped"] - before["dropped"]
        rows.append(("recording, burst", label, ns, f"{dropped / max(1, sent + dropped):.1%} dropped"))
    for rate in (5_000, 20_000):
        n_paced = rate * 2
        before = dict(sc.stats())
        loop_paced(n_paced, rate)
        sc.flush()
        dropped = sc.stats()["dropped"] - before["dropped"]
        rows.append((f"recording, paced {rate:,}/s", 'with span("generate")', best_ns(loop_span, 2000, 3),
                     f"{dropped} of {n_paced} dropped"))
    sc.flush()
    return {"rows": rows, "stats": sc.stats()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        print(json.dumps(client(a.n, a.repeat)))
        return 0
    cmd = [sys.executable, __file__, "--client", "--n", str(a.n), "--repeat", str(a.repeat)]
    env = {k: v for k, v in os.environ.items() if k != sc.ENV_VAR}
    rows = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)["rows"]

    # The recorder's side lives in this process, as it would in `record`; the spans come from a child.
    received = [0]
    ctx = SessionContext(emit_rows=lambda t, r: received.__setitem__(0, received[0] + len(r)) if t == "spans" else None,
                         emit_columns_fn=lambda t, c: None, emit_batch_fn=lambda t, b: None,
                         target=TargetTree.for_host())
    rx = SpanReceiver()
    rx.start(ctx)
    stop = threading.Event()

    def sampler() -> None:  # the recorder's sampling thread drains every 100 ms
        while not stop.wait(0.1):
            rx.sample(time.monotonic_ns())

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    try:
        out = json.loads(subprocess.run(cmd, env=dict(env, **rx.target_env()), capture_output=True, text=True,
                                        check=True).stdout)
        rows += out["rows"]
        time.sleep(0.3)
    finally:
        stop.set()
        th.join()
        rx.stop()
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"n={a.n}, best of {a.repeat}; spans sent {out['stats']['sent']:,}, dropped "
          f"{out['stats']['dropped']:,}, received by the recorder {received[0]:,}")
    print()
    print("| case | operation | ns per span | notes |")
    print("|---|---|---:|---|")
    for case, op, ns, note in rows:
        print(f"| {case} | {op} | {ns:,.0f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
