"""``autoglm-trace oom REC [--json]``: post-mortem of every OOM kill and CUDA out-of-memory."""

from __future__ import annotations

import json
import sys

from autoglm_trace.tracer.commands._parser import CommandParser

NAME = "oom"
SUMMARY = "post-mortem of every OOM kill and CUDA OOM: victim, limit, growth, leak or load (--json)"
ORDER = 32

EPILOG = """examples:
  autoglm-trace oom rec
  autoglm-trace oom rec --json | jq '.kills[] | {pid, kind, verdict}'

For each kill: the victim, the killer path (host, memcg with its limit, or CUDA), its memory and its
tree's over the last minute, who else grew, reclaim stalls and major faults just before, and a
verdict: leak (the floor keeps rising after requests finish), kv_cache_growth (memory follows the
load), sudden_allocation, or unknown. The JSON is documented in docs/analysis.md."""


def main(argv: list[str]) -> int:
    p = CommandParser(NAME, SUMMARY, EPILOG)
    p.add_argument("recording", help="recording directory")
    p.add_argument("--json", action="store_true", help="machine-readable output (docs/analysis.md)")
    args = p.parse_args(argv)
    from autoglm_trace.analysis.oom import oom_postmortem
    from autoglm_trace.analysis.reader import Recording
    from autoglm_trace.analysis.render import print_markup, render_oom

    d = oom_postmortem(Recording(args.recording))
    if args.json:
        json.dump(d, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print_markup(render_oom(d))
    return 0
