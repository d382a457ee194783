"""``autoglm-trace record``: record a process tree, a cgroup or the host into REC/."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoglm_trace.errors import TargetError, UsageError
from autoglm_trace.probes.collectors import registry
from autoglm_trace.tracer.commands._parser import CommandParser, float_in, int_in
from autoglm_trace.tracer.commands.export import parse_labels as export_labels
from autoglm_trace.tracer.session import Recorder, RecordOptions, install_signal_handlers

if TYPE_CHECKING:
    from autoglm_trace.tracer.flight import FlightOptions

NAME = "record"
SUMMARY = "record a process tree (-p PID | -- CMD), a cgroup or the host into a recording"
ORDER = 10
MAX_DURATION_S = 366 * 86400.0  # a year: longer is a typo, and time arithmetic stays exact

EPILOG = """examples:
  sudo autoglm-trace record -o rec -- python3 server.py --port 8000
  sudo autoglm-trace record -p 4242 --duration 60 -o rec
  sudo autoglm-trace record --cgroup system.slice/vllm.service --duration 300
  sudo autoglm-trace record --scrape http://127.0.0.1:8000/metrics -o rec -- vllm serve MODEL
  autoglm-trace record --no-bpf -o rec -- ./bench.sh      # unprivileged: /proc sampler only
  sudo autoglm-trace record --ring 5m -o /var/lib/autoglm-trace/flight --keep 20   # always-on, whole host
  sudo autoglm-trace record --ring 2m --cgroup system.slice/vllm.service --trigger-expr 'gpu_mem_used_frac>0.97'
  sudo autoglm-trace record --live --prometheus 9464 -o rec -p 4242   # live view + /metrics

The target runs as the user who invoked sudo (SUDO_UID/SUDO_GID), never through a shell; the
recording is owned by that user too. Ctrl-C ends the recording cleanly (a second Ctrl-C aborts).
If the recorder is killed, the target it started is killed too (it never runs on unwatched).

exit status: 0 recorded (and a started target exited 0); 7 the recording is complete but the started
target exited non-zero or was killed by a signal; 2 bad options; 5 the target cannot be traced or
started; 6 the recording could not be written; 130 aborted by a second Ctrl-C.
"""


def build_parser(for_top: bool = False) -> argparse.ArgumentParser:
    """record's parser. ``for_top``: the same target and collector options for ``top``, with the
    options that only make sense when writing a recording accepted (so top can say why it refuses
    them) but left out of --help."""
    def record_only(text: str) -> str:
        return argparse.SUPPRESS if for_top else text

    p = CommandParser(NAME, SUMMARY, EPILOG)
    tgt = p.add_argument_group("target (one of)")
    tgt.add_argument("-p", "--pid", type=int_in(1, 2**22), help="attach to a running process and its children")
    tgt.add_argument("--cgroup", help="a cgroup path (e.g. system.slice/x.service or /sys/fs/cgroup/...)")
    tgt.add_argument("--host", action="store_true", help="the whole host (no target filter)")
    p.add_argument("-o", "--output", help=record_only("recording directory to create (default: ./autoglm-YYYYmmdd-HHMMSS)"))
    p.add_argument("-d", "--duration", type=float_in(0, MAX_DURATION_S, " s", lo_open=True), help="stop after S seconds")
    p.add_argument("-i", "--interval", type=int_in(1, 60_000, " ms"), default=100, metavar="MS", help="sampling interval (default 100 ms)")
    add_collector_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help=record_only("no live status line"))
    p.add_argument("--live", action="store_true", help=record_only("show the live view (as 'top') while recording"))
    p.add_argument("--prometheus", metavar="[ADDR:]PORT",
                   help="serve autoglm_trace_* metrics on http://ADDR:PORT/metrics (ADDR default 127.0.0.1)")
    p.add_argument("--json", action="store_true", help=record_only("print the final summary as JSON"))
    # Hidden: print the generated BPF program and exit (tested without root).
    p.add_argument("--print-bpf", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]: start and record a command")
    # Flight recorder (tracer/flight/): --ring keeps the last DURATION in memory and writes
    # DIR/<time>-<trigger>/ per incident; without a target it watches the whole host.
    fl = p if for_top else p.add_argument_group("flight recorder (always-on; see docs/flight-recorder.md)")
    fl.add_argument("--ring", metavar="DURATION", help=record_only("keep the last DURATION (e.g. 5m) in memory and save it on a trigger"))
    fl.add_argument("--ring-bytes", metavar="SIZE", help=record_only("memory limit of the ring (default 24M)"))
    fl.add_argument("--trigger", metavar="LIST", help=record_only("oom,exit,spike,signal,threshold (default: oom,exit,spike,signal)"))
    fl.add_argument("--trigger-expr", action="append", metavar="EXPR", help=record_only("threshold trigger, e.g. 'gpu_mem_used_frac>0.97' (repeatable)"))
    fl.add_argument("--tail", metavar="S", help=record_only("keep recording S after a trigger before saving (default 10s)"))
    fl.add_argument("--cooldown", metavar="S", help=record_only("ignore new triggers for S after one (default 60s; SIGUSR1 always works)"))
    fl.add_argument("--keep", type=int_in(1, 1_000_000), metavar="N", help=record_only("keep at most N snapshots (oldest deleted)"))
    fl.add_argument("--keep-bytes", metavar="SIZE", help=record_only("keep at most SIZE of snapshots (oldest deleted)"))
    fl.add_argument("--export-parquet", metavar="DIR",
                    help=record_only("also export each saved snapshot into the Parquet fleet dataset at DIR (see 'fleet')"))
    fl.add_argument("--export-host", metavar="NAME", help=record_only("with --export-parquet: host name to file snapshots under"))
    fl.add_argument("--export-build", metavar="LABEL", help=record_only("with --export-parquet: build of the served software"))
    fl.add_argument("--export-label", action="append", metavar="KEY=VALUE",
                    help=record_only("with --export-parquet: extra label stored with each snapshot (repeatable)"))
    return p


def add_collector_options(p: argparse.ArgumentParser) -> None:
    """Every collector's declared options (probes/collectors/), under its own heading."""
    for spec in registry():
        if not spec.options:
            continue
        group = p.add_argument_group(spec.title) if spec.title else p
        for o in spec.options:
            group.add_argument(*o.flags, **o.argparse_kwargs())


def collector_values(args: argparse.Namespace) -> dict[str, Any]:
    """The declared options' values out of the Namespace (which stops here)."""
    return {o.dest: getattr(args, o.dest) for spec in registry() for o in spec.options}


def parse_options(argv: list[str]) -> tuple[argparse.Namespace, RecordOptions]:
    # Split at the first "--" ourselves: argparse's REMAINDER is unreliable with options after it.
    cmd: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    if args.command:
        raise UsageError(f"record: unexpected argument {args.command[0]!r} (put the command after '--')")
    flight_only = [n for n in ("ring_bytes", "trigger", "trigger_expr", "tail", "cooldown", "keep", "keep_bytes",
                                "export_parquet", "export_host", "export_build", "export_label")
                   if getattr(args, n) is not None]
    if flight_only and not args.ring:
        raise UsageError(f"record: --{flight_only[0].replace('_', '-')} needs --ring DURATION")
    chosen = [x for x in (args.pid is not None, bool(cmd), bool(args.cgroup), args.host) if x]
    if len(chosen) > 1:
        raise UsageError("record: give one target: -p PID, --cgroup PATH, --host or -- CMD")
    if not chosen and not args.print_bpf and not args.ring:
        raise UsageError("record: no target: give -p PID, --cgroup PATH, --host or -- CMD [ARGS...]")
    if args.prometheus:
        from autoglm_trace.tracer.exporter import parse_listen

        try:
            parse_listen(args.prometheus)  # refused now, not when the endpoint starts
        except UsageError as e:
            raise UsageError(f"record: {e}") from None
    if args.probe_body is not None:
        try:
            json.loads(args.probe_body)
        except ValueError:
            raise UsageError("record: --probe-body is not valid JSON") from None
    out = Path(args.output or datetime.now().strftime("autoglm-%Y%m%d-%H%M%S"))
    opts = RecordOptions(
        output=out, pid=args.pid, command=cmd or None, cgroup=args.cgroup, host=args.host or (bool(args.ring) and not chosen),
        duration_s=args.duration, interval_ms=args.interval, collector_options=collector_values(args),
    )
    if opts.latency_log and not os.path.exists(opts.latency_log):
        raise UsageError(f"record: latency log {opts.latency_log} does not exist")
    if opts.latency_log and not os.path.isfile(opts.latency_log):
        # A FIFO or device would block the recorder in open() before the first sample.
        raise UsageError(f"record: latency log {opts.latency_log} is not a regular file")
    if opts.latency_log:
        _check_latency_log_readable(opts.latency_log)
    if args.ring:
        flight_options(args, opts)  # the --ring family is checked before anything starts, too
    return args, opts


def _check_latency_log_readable(path: str) -> None:
    """The log is opened with the permissions of the user who ran sudo (autoglm_trace/safefile.py):
    say so now, before anything starts, when that user cannot read it."""
    from autoglm_trace.safefile import open_regular_as
    from autoglm_trace.tracer.spawn import sudo_user

    run_as = sudo_user()
    try:
        os.close(open_regular_as(path, run_as))
    except OSError as e:
        who = f" by uid {run_as[0]} (it is opened with the permissions of the user who ran sudo)" if run_as else ""
        raise UsageError(f"record: latency log {path} cannot be read{who}: {e.strerror or e}") from None


def main(argv: list[str]) -> int:
    args, opts = parse_options(argv)
    if args.print_bpf:
        from autoglm_trace.probes import bpf_program

        mode = "cgroup" if opts.cgroup else "host" if opts.host else "tree"
        kopts = {k: v for k, v in opts.collector_options.items() if v is not None}
        kopts["bucket_ms"] = kopts.get("bucket_ms") or opts.interval_ms
        sys.stdout.write(bpf_program.generate_program({**kopts, "filter": mode}))
        return 0
    if args.ring:
        return main_ring(args, opts)

    from autoglm_trace.tracer.live_status import StatusLine
    from autoglm_trace.tracer.live_view import side_outputs

    status = StatusLine(enabled=not args.quiet and not args.json and not args.live)
    sinks, live, _exporter = side_outputs(args.live, args.prometheus)  # the recorder closes the sinks
    rec = Recorder(opts, on_tick=live.update if live else status.update, sinks=sinks)
    restore = install_signal_handlers(rec)
    try:
        status.start()
        if live:
            live.start()
        try:
            manifest = rec.run()
        finally:
            status.stop()
            if live:
                live.stop()
    finally:
        restore()
    if manifest["target"].get("mode") == "pid" and rec.samples <= 2 and manifest["stop_reason"] == "target exited":
        # Nothing meaningful was recorded: say so, but the recording stays.
        raise TargetError(f"process {opts.pid} exited as recording started (recording kept at {opts.output})")
    return _report(manifest, opts.output, args.json)


def _report(manifest: dict[str, Any], out: Path, as_json: bool) -> int:
    from autoglm_trace.tracer.commands import record_report

    record_report.hand_off(out, as_json)  # returns only where no fresh process can take over
    return record_report.report(manifest, out, as_json)


# The flight recorder (--ring): the Namespace ends here; tracer/flight/ takes FlightOptions.
def flight_options(args: argparse.Namespace, opts: RecordOptions) -> FlightOptions:
    """Validate the --ring family of options (UsageError on anything wrong)."""
    from autoglm_trace.signals import parse_duration, parse_size
    from autoglm_trace.tracer.flight import (
        DEFAULT_COOLDOWN_S,
        DEFAULT_RING_BYTES,
        DEFAULT_TAIL_S,
        DEFAULT_TRIGGERS,
        TRIGGERS,
        FlightOptions,
        parse_expr,
    )

    def bad(msg: str) -> UsageError:
        return UsageError(f"record: {msg}")

    try:
        ring_s = parse_duration(args.ring)
    except ValueError as e:
        raise bad(f"--ring: {e}") from None
    if ring_s < 1:
        raise bad("--ring must be at least 1 s")
    try:
        ring_bytes = parse_size(args.ring_bytes) if args.ring_bytes else DEFAULT_RING_BYTES
        keep_bytes = parse_size(args.keep_bytes) if args.keep_bytes else None
        tail_s = parse_duration(args.tail) if args.tail is not None else DEFAULT_TAIL_S
        cooldown_s = parse_duration(args.cooldown) if getattr(args, "cooldown", None) is not None else DEFAULT_COOLDOWN_S
    except ValueError as e:
        raise bad(str(e)) from None
    if ring_bytes < 1 << 20:
        raise bad("--ring-bytes must be at least 1M")
    if args.keep is not None and args.keep < 1:
        raise bad("--keep must be at least 1")
    if keep_bytes is not None and keep_bytes <= 0:
        raise bad("--keep-bytes must be positive")
    export_args: list[str] = []
    if args.export_parquet and Path(args.export_parquet).exists() and not Path(args.export_parquet).is_dir():
        raise bad(f"--export-parquet: {args.export_parquet} exists and is not a directory")
    if (args.export_host or args.export_build or args.export_label) and not args.export_parquet:
        raise bad("--export-host, --export-build and --export-label need --export-parquet DIR")
    if args.export_host:
        from autoglm_trace.analysis import dataset

        if not dataset.SAFE_VALUE.match(args.export_host):
            raise bad(f"--export-host {args.export_host!r}: use letters, digits, '.', '_' and '-'")
        export_args += ["--host", args.export_host]
    try:
        export_labels([f"build={args.export_build}"] if args.export_build else [])
        export_labels(args.export_label or [])
    except UsageError as e:
        raise bad(str(e).removeprefix("export: ").replace("--label", "--export-label")) from None
    if args.export_build:
        export_args += ["--build", args.export_build]
    for item in args.export_label or []:
        export_args += ["--label", item]
    thresholds = []
    for text in args.trigger_expr or []:
        try:
            thresholds.append(parse_expr(text))
        except ValueError as e:
            raise bad(f"--trigger-expr: {e}") from None
    if args.trigger:
        trig = [t.strip() for t in args.trigger.split(",") if t.strip()]
        unknown = [t for t in trig if t not in TRIGGERS and t != "all"]
        if unknown:
            raise bad(f"--trigger: unknown trigger {unknown[0]!r}; choose from {', '.join(TRIGGERS)}")
        if "all" in trig:
            trig = list(TRIGGERS)
        if "threshold" in trig and not thresholds:
            if args.trigger.strip() != "all":
                raise bad("--trigger threshold needs --trigger-expr METRIC>VALUE")
            trig.remove("threshold")
        if thresholds and "threshold" not in trig:
            trig.append("threshold")
    else:
        trig = list(DEFAULT_TRIGGERS) + (["threshold"] if thresholds else [])
    out = Path(args.output) if args.output else Path("autoglm-flight")
    return FlightOptions(out_dir=out, ring_s=ring_s, ring_bytes=ring_bytes, triggers=tuple(trig),
                         thresholds=thresholds, tail_s=tail_s, cooldown_s=cooldown_s, keep=args.keep,
                         keep_bytes=keep_bytes,
                         export_parquet=Path(args.export_parquet) if args.export_parquet else None,
                         export_args=tuple(export_args))


def main_ring(args: argparse.Namespace, opts: RecordOptions) -> int:
    """``record --ring``: the options checked (before anything starts), then the flight session."""
    fo = flight_options(args, opts)
    if getattr(args, "live", False):
        raise UsageError("record: --live does not combine with --ring (the flight recorder logs one line per "
                         "event); run 'autoglm-trace top' beside it")
    from autoglm_trace.tracer.flight import run_ring

    extra: list[Any] = []
    if args.prometheus:  # a service can export metrics while it flight-records
        from autoglm_trace.tracer.live_view import side_outputs

        extra, _, _ = side_outputs(False, args.prometheus)  # the recorder closes its sinks
    return run_ring(fo, opts, extra)
