"""``autoglm-trace export REC --perfetto out.json | --parquet DIR``: the recording as a Perfetto trace,
or into the fleet dataset (Hive-partitioned Parquet, docs/format-parquet.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from autoglm_trace.errors import UsageError, WriteError
from autoglm_trace.tracer.commands._parser import CommandParser

NAME = "export"
SUMMARY = "export to Perfetto (Chrome trace JSON) or to Parquet for fleet queries (DuckDB, Spark, Trino)"
ORDER = 45

EPILOG = """examples:
  autoglm-trace export rec --perfetto trace.json
  autoglm-trace export rec --perfetto trace.json.gz      # gzipped; Perfetto opens it as is
  autoglm-trace export rec --parquet /data/fleet --build v2.3.1 --label rack=r12
  autoglm-trace fleet /data/fleet                         # then query every host's exports

Open a Perfetto file at https://ui.perfetto.dev ("Open trace file"); the file never leaves your
browser. Timestamps are microseconds from the recording's first event (its UTC time is in otherData).

--parquet writes every table, plus the findings of 'analyze' and 'oom' (incidents, causes, culprits,
oom_kills) and one 'recordings' row, as DIR/<table>/host=H/date=YYYY-MM-DD/<recording_id>.parquet,
with host, boot_id and recording_id on every row and UTC timestamps beside ts_ns (docs/format-parquet.md).
Exporting the same recording again replaces its files."""


def parse_labels(items: list[str]) -> dict[str, str]:
    from autoglm_trace.analysis.parquet_export import check_label

    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"export: --label wants KEY=VALUE, got {item!r}")
        check_label(key, value)
        out[key] = value
    return out


def main(argv: list[str]) -> int:
    p = CommandParser(NAME, SUMMARY, EPILOG)
    p.add_argument("recording", help="recording directory")
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--perfetto", metavar="FILE",
                     help="write Chrome trace-event JSON (.json, or .json.gz to compress)")
    fmt.add_argument("--parquet", metavar="DIR", help="write into the Parquet dataset at DIR (created if absent)")
    pq = p.add_argument_group("--parquet options")
    pq.add_argument("--host", metavar="NAME", help="host name to file it under (default: the manifest's hostname)")
    pq.add_argument("--build", metavar="LABEL", help="build / version of the served software (for fleet --builds)")
    pq.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                    help="extra label stored with the recording (repeatable)")
    pq.add_argument("--json", action="store_true", help="print what was written as JSON")
    args = p.parse_args(argv)
    if args.parquet is not None:
        return _parquet(args)
    if args.host or args.build or args.label or args.json:
        raise UsageError("export: --host, --build, --label and --json go with --parquet")
    from autoglm_trace.analysis.outfile import check_output

    out = check_output("export", args.perfetto, reading=[args.recording])

    from autoglm_trace.analysis.perfetto import export_perfetto
    from autoglm_trace.analysis.reader import Recording

    rec = Recording(args.recording)
    try:
        st = export_perfetto(rec, out)
    except OSError as e:
        raise WriteError(f"cannot write {out}: {e.strerror or e}") from None
    phases = ", ".join(f"{n:,} {k}" for k, n in sorted(st["by_phase"].items()))
    print(f"wrote {out} ({st['bytes'] / 1e6:.1f} MB, {st['events']:,} events: {phases})")
    if st["spans_in_lanes"]:
        print(f"{st['spans_in_lanes']:,} of {st['spans']:,} spans overlap on their thread or have none: "
              f"drawn on {st['lanes']} lanes of the 'requests' process")
    if st["tables_absent"]:
        print("not in the recording: " + ", ".join(st["tables_absent"]))
    return 0


def _parquet(args) -> int:
    from autoglm_trace.analysis import dataset
    from autoglm_trace.analysis.parquet_export import export_parquet
    from autoglm_trace.analysis.reader import Recording

    out = Path(args.parquet)
    if args.host is not None and not dataset.SAFE_VALUE.match(args.host):
        raise UsageError(f"export: --host {args.host!r}: use letters, digits, '.', '_' and '-' (it names a directory)")
    if args.build is not None:
        parse_labels([f"build={args.build}"])
    labels = parse_labels(args.label)
    if out.is_symlink():
        raise UsageError(f"export: {out} is a symbolic link; give the directory itself")
    if out.exists() and not out.is_dir():
        raise UsageError(f"export: {out} exists and is not a directory")
    if not out.exists() and not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise UsageError(f"export: directory {out.parent} does not exist")
    try:
        real_out, real_rec = out.resolve(), Path(args.recording).resolve(strict=True)
    except OSError:
        real_out = real_rec = None  # the reader reports a missing recording itself
    if real_rec is not None and (real_out == real_rec or real_rec in real_out.parents):
        raise UsageError(f"export: {out} is inside the recording {args.recording} being read; write the dataset elsewhere")
    rec = Recording(args.recording)
    try:
        out.mkdir(exist_ok=True)
        st = export_parquet(rec, out, host=args.host, build=args.build, labels=labels)
    except OSError as e:
        raise WriteError(f"cannot write into {out}: {e.strerror or e}") from None
    if args.json:
        json.dump(st, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    rows = ", ".join(f"{n:,} {t}" for t, n in sorted(st["rows"].items()))
    print(f"exported {args.recording} as host={st['host']} recording {st['recording_id']}: {len(st['files'])} "
          f"files, {st['bytes'] / 1e6:.1f} MB into {out} ({rows})")
    if st["truncated"]:
        print("cut short in the recording (exported up to the last whole batch): " + ", ".join(st["truncated"]))
    return 0
