"""``autoglm-trace export REC --perfetto out.json``: the recording as a trace for ui.perfetto.dev."""

from __future__ import annotations

from autoglm_trace.errors import WriteError
from autoglm_trace.tracer.commands._parser import CommandParser

NAME = "export"
SUMMARY = "export to Chrome trace JSON for ui.perfetto.dev: spans, thread states, counters, OOM markers"
ORDER = 45

EPILOG = """examples:
  autoglm-trace export rec --perfetto trace.json
  autoglm-trace export rec --perfetto trace.json.gz      # gzipped; Perfetto opens it as is

Open the file at https://ui.perfetto.dev ("Open trace file"); the file never leaves your browser.
Timestamps are microseconds from the recording's first event (its UTC time is in otherData)."""


def main(argv: list[str]) -> int:
    p = CommandParser(NAME, SUMMARY, EPILOG)
    p.add_argument("recording", help="recording directory")
    p.add_argument("--perfetto", metavar="FILE", required=True,
                   help="write Chrome trace-event JSON (.json, or .json.gz to compress)")
    args = p.parse_args(argv)
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
