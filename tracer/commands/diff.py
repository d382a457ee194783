"""``autoglm-trace diff BASE NEW [--json]``: what got slower between two recordings, and why."""

from __future__ import annotations

import json
import sys

from autoglm_trace.tracer.commands._parser import CommandParser, int_in

NAME = "diff"
SUMMARY = "perf-regression hunt: latency p50/p90/p99 change with confidence, signals per request ranked"
ORDER = 34

EPILOG = """examples:
  autoglm-trace diff before.rec after.rec
  autoglm-trace diff before.rec after.rec --json | jq .likely_cause

Latency quantiles come with distribution-free 95% confidence intervals (order statistics); a change
is marked significant when the intervals do not overlap. Resource signals are normalised per request
(per second when a recording has no request timings) and ranked by how much they got worse. The
JSON is documented in docs/analysis.md."""


def main(argv: list[str]) -> int:
    p = CommandParser(NAME, SUMMARY, EPILOG)
    p.add_argument("base", help="the recording before (baseline)")
    p.add_argument("new", help="the recording after (suspected regression)")
    p.add_argument("--top", type=int_in(1, 10_000), default=10, help="signals to show (default 10)")
    p.add_argument("--json", action="store_true", help="machine-readable output (docs/analysis.md)")
    args = p.parse_args(argv)
    from autoglm_trace.analysis.diff import diff_recordings
    from autoglm_trace.analysis.reader import Recording
    from autoglm_trace.analysis.render import print_markup, render_diff

    d = diff_recordings(Recording(args.base), Recording(args.new))
    if args.json:
        json.dump(d, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print_markup(render_diff(d, top=args.top))
    return 0
