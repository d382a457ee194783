"""``autoglm-trace oom REC [--json]``: post-mortem of every OOM kill and CUDA out-of-memory."""

from __future__ import annotations

import json
import sys

from autoglm_trace.tracer.commands._latency import add_latency_option, load_latency, skipped_finding
from autoglm_trace.tracer.commands._parser import CommandParser

NAME = "oom"
SUMMARY = "post-mortem of every OOM kill and CUDA OOM: victim, limit, growth, leak or load (--json)"
ORDER = 32

EPILOG = """examples:
  autoglm-trace oom rec
  autoglm-trace oom rec --latency requests.jsonl     # request timings logged by the server
  autoglm-trace oom rec --json | jq '.kills[] | {pid, kind, verdict}'

For each kill: the victim, the killer path (host, memcg with its limit, or CUDA), its memory and its
tree's over the last minute, who else grew, reclaim stalls and major faults just before, and a
verdict: leak (the floor keeps rising after requests finish, or memory grows while the engine's
KV-cache usage stays flat), kv_cache_growth (memory follows the load: requests in flight from spans
or --latency, the engine's running requests and KV-cache usage from record --scrape),
sudden_allocation, or unknown. The JSON is documented in docs/analysis.md."""


def main(argv: list[str]) -> int:
    p = CommandParser(NAME, SUMMARY, EPILOG)
    p.add_argument("recording", help="recording directory")
    add_latency_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output (docs/analysis.md)")
    args = p.parse_args(argv)
    from autoglm_trace.analysis.oom import oom_postmortem
    from autoglm_trace.analysis.reader import Recording
    from autoglm_trace.analysis.render import print_markup, render_oom

    rec = Recording(args.recording)
    rows, errors = load_latency(NAME, args.latency, rec.wall_offset_ns)
    d = oom_postmortem(rec, latency_rows=rows)
    if (skipped := skipped_finding(errors)) is not None:
        d.setdefault("findings", []).append(skipped)
    if args.json:
        json.dump(d, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print_markup(render_oom(d))
    return 0
