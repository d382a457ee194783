"""``autoglm-trace summary REC [--json]``: what was recorded, and the target tree's totals."""

from __future__ import annotations

import json
import sys

from autoglm_trace.tracer.commands._parser import CommandParser

NAME = "summary"
SUMMARY = "what a recording holds: target, duration, tables, whole-life totals (--json for scripts)"
ORDER = 20

EPILOG = """examples:
  autoglm-trace summary rec
  autoglm-trace summary rec --json | jq .totals.ctx_switches_involuntary.value

The JSON is a stable contract, documented in docs/format.md ("summary --json")."""


def main(argv: list[str]) -> int:
    p = CommandParser(NAME, SUMMARY, EPILOG)
    p.add_argument("recording", help="recording directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    from autoglm_trace.analysis.reader import Recording
    from autoglm_trace.analysis.summary import render_summary, summarize

    s = summarize(Recording(args.recording))
    if args.json:
        json.dump(s, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        render_summary(s)
    return 0
