"""``autoglm-trace report REC -o report.html``: one self-contained HTML report (opens offline)."""

from __future__ import annotations

import sys

from autoglm_trace.errors import WriteError
from autoglm_trace.tracer.commands._parser import CommandParser, int_in

NAME = "report"
SUMMARY = "self-contained HTML report: latency timeline, resource tracks, causes, OOM post-mortem"
ORDER = 40

EPILOG = """examples:
  autoglm-trace report rec -o report.html
  autoglm-trace report rec -o /tmp/incident.html --open-browser yes

The file embeds plotly.js (about 5 MB) and needs no network to open. When the recording lacks
tables (no root: no kernel probes; no GPU), the report says which signals it could not check."""


def main(argv: list[str]) -> int:
    p = CommandParser(NAME, SUMMARY, EPILOG)
    p.add_argument("recording", help="recording directory")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--open-browser", choices=("yes", "no"), default="no",
                   help="open the report in the default browser when written (default: no)")
    p.add_argument("--max-points", type=int_in(10, 1_000_000), default=2000, metavar="N",
                   help="points per plotted track; spikes are kept when downsampling (default: 2000)")
    args = p.parse_args(argv)
    from autoglm_trace.analysis.outfile import check_output

    out = check_output("report", args.output, reading=[args.recording])

    from autoglm_trace.analysis import tracks
    from autoglm_trace.analysis.reader import Recording
    from autoglm_trace.analysis.report import write_report

    rec = Recording(args.recording)
    try:
        write_report(rec, out, max_points=args.max_points)
    except OSError as e:
        raise WriteError(f"cannot write {out}: {e.strerror or e}") from None
    size = out.stat().st_size
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
    missing = tracks.missing_signals(rec)
    if missing:
        print("not checked (not recorded): " + ", ".join(m["signal"] for m in missing), file=sys.stderr)
    if args.open_browser == "yes":
        import webbrowser

        if not webbrowser.open(out.resolve().as_uri()):
            print(f"could not start a browser; open {out.resolve()} yourself", file=sys.stderr)
    return 0
