"""``autoglm-trace analyze REC [--latency FILE] [--json]``: latency incidents, causes, culprits."""

from __future__ import annotations

import json
import sys

from autoglm_trace.tracer.commands._latency import add_latency_option, load_latency, skipped_finding
from autoglm_trace.tracer.commands._parser import CommandParser, float_in

NAME = "analyze"
SUMMARY = "find latency spikes, name their cause and the culprit process, OOM post-mortems (--json)"
ORDER = 30
MAX_WINDOW_S = 7 * 86400.0  # a week: wider is a typo, and window ns stay far inside int64

EPILOG = """examples:
  autoglm-trace analyze rec
  autoglm-trace analyze rec --latency requests.jsonl      # request timings logged by the server
  autoglm-trace analyze rec --json | jq '.incidents[0].causes[0]'
  autoglm-trace analyze rec -v                             # every signal's numbers, every reason

Incidents are requests slow for their size (latency vs a per-name fit on output tokens), merged
when close; without request timings, windows where a stall signal spiked. Each incident's causes
are ranked by how much of the extra latency they account for; culprits come from the kernel's
preemption, block-I/O, reclaim and GPU-process tables. The JSON is a stable contract documented in
docs/analysis.md."""


def main(argv: list[str]) -> int:
    p = CommandParser(NAME, SUMMARY, EPILOG)
    p.add_argument("recording", help="recording directory")
    add_latency_option(p)
    p.add_argument("--window", type=float_in(0, MAX_WINDOW_S, " s", lo_open=True), default=1.0, metavar="S",
                   help="analysis window in seconds (default 1; never shorter than the kernel buckets)")
    p.add_argument("--json", action="store_true", help="machine-readable output (docs/analysis.md)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every signal's numbers")
    args = p.parse_args(argv)
    from autoglm_trace.analysis.diagnosis import diagnose
    from autoglm_trace.analysis.reader import Recording
    from autoglm_trace.analysis.render import print_markup, render_diagnosis

    rec = Recording(args.recording)
    rows, errors = load_latency(NAME, args.latency, rec.wall_offset_ns)
    d = diagnose(rec, latency_rows=rows, window_ns=int(args.window * 1e9))
    if (skipped := skipped_finding(errors)) is not None:
        d["findings"].append(skipped)
    if args.json:
        json.dump(d, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print_markup(render_diagnosis(d, verbose=args.verbose))
    return 0
