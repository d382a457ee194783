"""Benchmark: time and peak RSS of ``diagnose()`` on synthetic recordings at default rates.

    .venv/bin/python bench/bench_analysis.py [--durations 60,600,3600,21600] [--kind cpu]

Each recording is generated first (tests/fakes/synthetic.py: 100 ms sampling, 4 target threads,
5 requests/s, one GPU, one injected incident), then ``diagnose`` runs in a fresh child process so
its peak RSS (ru_maxrss) is its own. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.diagnosis import diagnose
t = time.perf_counter()
rec = Recording(sys.argv[1])
d = diagnose(rec)
el = time.perf_counter() - t
top = d["incidents"][0]["causes"][0] if d["incidents"] else {}
print(json.dumps({"seconds": el, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows": sum(rec.rows().values()), "incidents": len(d["incidents"]),
                  "top": top.get("kind"), "culprit": (top.get("culprits") or [{}])[0].get("pid")}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--durations", default="60,600,3600,21600", help="recording lengths in seconds")
    p.add_argument("--kind", default="cpu", help="scenario (see tests/fakes/synthetic.py)")
    p.add_argument("--threads", type=int, default=4, help="target threads (sched/faults rows per bucket)")
    p.add_argument("--keep", action="store_true", help="keep the generated recordings")
    args = p.parse_args()
    from tests.fakes.synthetic import Scenario, write_recording

    tmp = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    print(f"<!-- {time.strftime('%Y-%m-%d %H:%M:%S')} on {os.cpu_count()} CPUs, {args.threads} target threads -->")
    print("| recording | rows | size MiB | generate s | diagnose s | peak RSS MiB | incidents | top cause | culprit |")
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        for dur in [float(x) for x in args.durations.split(",")]:
            path = tmp / f"rec{int(dur)}"
            t = time.perf_counter()
            write_recording(path, Scenario(kind=args.kind, duration_s=dur, incident_start_s=dur * 0.6,
                                              threads=args.threads))
            gen = time.perf_counter() - t
            size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
            r = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                               check=True, cwd=ROOT)
            m = json.loads(r.stdout.strip().splitlines()[-1])
            label = f"{dur / 3600:g} h" if dur >= 3600 else f"{dur / 60:g} min"
            print(f"| {label} | {m['rows']:,} | {size:.0f} | {gen:.1f} | {m['seconds']:.2f} | "
                  f"{m['peak_rss_mib']:.0f} | {m['incidents']} | {m['top']} | {m['culprit']} |", flush=True)
            if not args.keep:
                shutil.rmtree(path)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
