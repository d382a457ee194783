"""``autoglm-trace top``: the live view of a target, without writing a recording.

The same recorder as ``record`` (same collectors, same options, parsed by record's own parser), with
``write_files=False``: batches go to an in-memory ring that the live view reads through
``LiveRecording``, and optionally to the Prometheus exporter.
"""

from __future__ import annotations

import argparse
import sys

from autoglm_trace.errors import UsageError
from autoglm_trace.tracer.commands import record
from autoglm_trace.tracer.commands._parser import float_in

NAME = "top"
SUMMARY = "live view of a process tree (-p PID | -- CMD), a cgroup or the host; optional /metrics"
ORDER = 12

EPILOG = """examples:
  sudo autoglm-trace top -p 4242                      # attach to a running server
  sudo autoglm-trace top -- python3 server.py --port 8000
  sudo autoglm-trace top --cgroup system.slice/vllm.service --prometheus 9464
  autoglm-trace top --no-bpf -p 4242 --window 30      # unprivileged: /proc only, 30 s window
  sudo autoglm-trace top -p 4242 --scrape http://127.0.0.1:8000/metrics   # vLLM / SGLang's own latency

Every number is computed from the last --window seconds of the recorded tables (nothing is
written to disk; use 'record --live -o DIR' to keep a recording while watching). Panels: request
latency from spans and, with --scrape URL, the serving engine's own (TTFT / inter-token / e2e / queue
quantiles over the window, KV-cache usage, running / waiting, preemptions), run-queue latency and top preemptors, faults and D-state, reclaim stalls and
OOM kills, RSS and time-to-full, block I/O latency, GPU memory / utilisation / clocks / throttling,
and lost events. Ctrl-C quits. /metrics binds 127.0.0.1 unless ADDR is given.
"""

def build_parser() -> argparse.ArgumentParser:
    """record's parser (same target and collector options), presented as top's."""
    p = record.build_parser(for_top=True)
    p.prog = "autoglm-trace top"
    p.description = SUMMARY
    p.epilog = EPILOG
    p.add_argument("-w", "--window", type=float_in(0.5, 3600, " s"), default=10.0, metavar="S",
                   help="seconds of data each figure covers (default 10)")
    return p


def _strip_window(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("-w", "--window"):
            skip = True
            continue
        if a.startswith("--window=") or (a.startswith("-w") and len(a) > 2 and not a.startswith("--")):
            continue
        out.append(a)
    return out


def _renamed(e: UsageError) -> UsageError:
    msg = str(e)
    return UsageError("top:" + msg[len("record:"):] if msg.startswith("record:") else msg)


def parse_options(argv: list[str]) -> tuple[argparse.Namespace, float, record.RecordOptions]:
    pre, cmd = (argv[: argv.index("--")], argv[argv.index("--"):]) if "--" in argv else (argv, [])
    try:
        args, _ = build_parser().parse_known_args(pre)  # --help, --window and their errors
        _, opts = record.parse_options(_strip_window(pre) + cmd)
    except UsageError as e:
        raise _renamed(e) from None
    if args.output:
        raise UsageError("top: shows, does not record; use 'autoglm-trace record --live -o DIR' to keep a recording")
    if args.print_bpf or args.json or getattr(args, "ring", None):
        raise UsageError("top: --print-bpf, --json and --ring belong to 'record'")
    if not 0.5 <= args.window <= 3600:
        raise UsageError("top: --window must be between 0.5 and 3600 seconds")
    return args, args.window, opts


def main(argv: list[str]) -> int:
    from autoglm_trace.tracer.live_view import side_outputs
    from autoglm_trace.tracer.session import Recorder, install_signal_handlers

    args, window_s, opts = parse_options(argv)
    from rich.console import Console

    sinks, view, _exporter = side_outputs(True, args.prometheus, window_s, console=Console())
    assert view is not None
    rec = Recorder(opts, on_tick=view.update, sinks=sinks, write_files=False)
    restore = install_signal_handlers(rec)
    try:
        view.start()
        try:
            manifest = rec.run()
        finally:
            view.stop()
    finally:
        restore()
    print(f"autoglm-trace top: stopped ({manifest.get('stop_reason')}) after {manifest.get('duration_s')} s",
          file=sys.stderr)
    return 0
