"""Cost of the span API in ns per span: with no recorder listening, and with a SpanReceiver listening.

    .venv/bin/python bench/bench_span.py [--n 200000] [--repeat 5]

Prints a Markdown table (best of ``--repeat`` runs of ``--n`` spans each, minus nothing: the numbers
include the Python ``with`` statement itself; the empty-loop and ``contextlib.nullcontext`` rows give
the floor). With a recorder, a tight loop produces spans faster than one receiving thread can drain a
Unix datagram queue (``net.unix.max_dgram_qlen``, 10 by default), so the burst rows also report how
many spans were dropped (counted, never blocking); the paced row sends 5,000 spans/s, a busy server's
rate, where nothing should be dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time

from autoglm_trace.probes import span_client as sc
from autoglm_trace.probes.span_receiver import SpanReceiver
from autoglm_trace.tracer.collector import SessionContext
from autoglm_trace.tracer.target import TargetTree


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    rows: list[tuple[str, str, float, str]] = []

    sc.configure("")
    rows.append(("baseline", "empty loop iteration", best_ns(loop_empty, a.n, a.repeat), ""))
    rows.append(("baseline", "with nullcontext()", best_ns(loop_nullcontext, a.n, a.repeat), ""))
    rows.append(("no recorder", 'with span("generate")', best_ns(loop_span, a.n, a.repeat), ""))
    rows.append(("no recorder", "span + kwargs + mark_first_token + set", best_ns(loop_span_full, a.n, a.repeat), ""))
    rows.append(("no recorder", "@traced function call", best_ns(loop_traced, a.n, a.repeat), ""))

    received = [0]
    ctx = SessionContext(emit_rows=lambda t, r: received.__setitem__(0, received[0] + len(r)) if t == "spans" else None,
                         emit_columns_fn=lambda t, c: None, emit_batch_fn=lambda t, b: None,
                         target=TargetTree.for_host())
    rx = SpanReceiver()
    rx.start(ctx)
    try:
        sc.configure(rx.path)
        for label, fn in (('with span("generate")', loop_span),
                          ("span + kwargs + mark_first_token + set", loop_span_full),
                          ("@traced function call", loop_traced)):
            before = dict(sc.stats())
            ns = best_ns(fn, a.n, a.repeat)
            st = sc.stats()
            sent = st["sent"] - before["sent"]
            dropped = st["dropped"] - before["dropped"]
            rows.append(("recording, burst", label, ns, f"{dropped / max(1, sent + dropped):.0%} dropped"))
        n_paced = min(a.n, 25_000)
        before = dict(sc.stats())
        t0 = time.perf_counter_ns()
        loop_paced(n_paced)
        wall = (time.perf_counter_ns() - t0) / n_paced
        st = sc.stats()
        dropped = st["dropped"] - before["dropped"]
        # Paced: report the cost of the span itself (the wall time is mostly the pacing wait).
        t_cost = best_ns(loop_span, 2000, 3)
        rows.append(("recording, 5,000/s", 'with span("generate")', t_cost,
                     f"{dropped} of {n_paced} dropped (period {wall / 1000:.0f} us)"))
        time.sleep(0.3)
        rx.sample(time.monotonic_ns())
    finally:
        sc.configure("")
        rx.stop()

    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"n={a.n}, best of {a.repeat}; spans received by the recorder: {received[0]}")
    print()
    print("| case | operation | ns per span | notes |")
    print("|---|---|---:|---|")
    for case, op, ns, note in rows:
        print(f"| {case} | {op} | {ns:,.0f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
