"""The always-on flight recorder: ``autoglm-trace record --ring DURATION``.

The recorder runs with no recording files (``Recorder(write_files=False)``); every batch any collector
emits goes into a bounded in-memory ring (tracer/ring.py) that keeps the last DURATION of every table.
Each sampling tick ``FlightRecorder.tick`` looks at the rows that arrived since the previous tick and
fires a trigger on

* ``oom``       -- a new ``oom_kills`` row (the kernel probes see every victim on the host),
* ``exit``      -- the target exiting abnormally: a ``proc_events`` exit of a target process with a
                   crash signal (or of the target's root with any signal / non-zero code), a spawned
                   target's exit status, or CUDA out-of-memory text in its stderr,
* ``spike``     -- a slow request among the spans (the same detector as ``analyze``),
* ``signal``    -- SIGUSR1 (an on-demand snapshot),
* ``threshold`` -- a ``--trigger-expr`` such as ``gpu_mem_used_frac>0.97`` turning true.

A trigger captures the ring at once (zero-copy references to its batches plus a cursor), keeps
recording for ``--tail`` seconds, then writes ``DIR/<UTC time>-<trigger>/`` on a writer thread: the
captured ring plus every row that arrived after the capture, as an ordinary recording (``analyze``,
``oom``, ``report`` read it unchanged). Triggers during the tail join that snapshot; after it, a
cool-down suppresses new ones (counted and logged) so an OOM storm cannot fill the disk, and
retention (``--keep N``, ``--keep-bytes SIZE``) deletes the oldest snapshots.

Everything is logged one line per event on stderr (journald-friendly). SIGTERM / SIGINT end the
session cleanly: a snapshot in its tail is written first.

The rooms: ``triggers`` (the expression parser, the threshold metrics, the trigger checks),
``snapshots`` (capture, manifest, writing, retention) and ``recorder`` (the tick loop, cool-down, the
session). Options arrive typed (``FlightOptions``); the command line is parsed in
tracer/commands/record.py.
"""

from autoglm_trace.signals import parse_duration, parse_size
from autoglm_trace.tracer.flight.recorder import (
    DEFAULT_COOLDOWN_S,
    DEFAULT_RING_BYTES,
    DEFAULT_TAIL_S,
    FlightOptions,
    FlightRecorder,
    FlightSession,
    run_ring,
)
from autoglm_trace.tracer.flight.snapshots import (
    apply_retention,
    list_snapshots,
    prepare_out_dir,
    write_snapshot,
)
from autoglm_trace.tracer.flight.triggers import (
    DEFAULT_TRIGGERS,
    METRICS,
    TRIGGERS,
    MetricState,
    Threshold,
    parse_expr,
    slow_spans,
)

__all__ = [
    "DEFAULT_COOLDOWN_S", "DEFAULT_RING_BYTES", "DEFAULT_TAIL_S", "DEFAULT_TRIGGERS", "METRICS", "TRIGGERS",
    "FlightOptions", "FlightRecorder", "FlightSession", "MetricState", "Threshold", "apply_retention",
    "list_snapshots", "parse_duration", "parse_expr", "parse_size", "prepare_out_dir", "run_ring", "slow_spans",
    "write_snapshot",
]
