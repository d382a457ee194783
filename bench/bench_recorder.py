"""Recorder cost at default settings: CPU, peak memory, recording size per hour.

Records an inference-like load (bench/workload_pingpong.py with request handling between hand-offs,
about 70k context switches/s here) with ``autoglm-trace record -q --no-gpu`` for ``--duration``
seconds (default 60; the 10-minute figure: ``--duration 600``). The recorder process is polled from
/proc every second: CPU (utime+stime of the recorder itself, not its children), RSS and VmHWM.
Reported: CPU % of one core over the whole run and in steady state (after the first 10 s, i.e.
without the BPF compile at start), peak RSS (VmHWM), RSS at the end, and the recording's size
scaled to an hour, with the rows written per table.

  sudo .venv/bin/python bench/bench_recorder.py [--duration 60] [--doc docs/benchmarks-overhead.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchdoc

WORKLOAD = str(Path(__file__).resolve().parent / "workload_pingpong.py")
TARGETS = {"cpu_pct": 5.0, "rss_mb": 200.0, "mb_per_hour": 100.0}
WARMUP_S = 10.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds (default 60; 600 for the 10-minute run)")
    ap.add_argument("--work", type=int, default=3000, help="workload --work (default 3000)")
    ap.add_argument("--no-bpf", action="store_true", help="record with the /proc sampler only")
    ap.add_argument("--doc", type=Path)
    ap.add_argument("--section", default="bench_recorder")
    args = ap.parse_args(argv)
    if os.geteuid() != 0 and not args.no_bpf:
        print("bench_recorder: needs root (BPF); run with sudo, or pass --no-bpf", file=sys.stderr)
        return 2
    load0 = benchdoc.load_average()
    tmp = Path(tempfile.mkdtemp(prefix="bench-recorder-"))
    try:
        out = tmp / "rec"
        cmd = [*benchdoc.autoglm_trace(), "record", "-q", "--no-gpu", *(["--no-bpf"] if args.no_bpf else []),
               "-o", str(out), "--", sys.executable, WORKLOAD, "--duration", str(args.duration),
               "--work", str(args.work)]
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watch = benchdoc.ProcWatch(p.pid, every_s=1.0)
        history: list[tuple[float, float, int]] = []
        while p.poll() is None:
            time.sleep(1.0)
            history.append((time.monotonic() - t0, watch.cpu_s, watch.rss_bytes))
        so, se = p.communicate()
        watch.stop()
        if p.returncode != 0:
            print(f"record failed ({p.returncode}): {se[-400:]}", file=sys.stderr)
            return 1
        from autoglm_trace.analysis.reader import Recording

        rec = Recording(out)
        dur = float(rec.manifest.get("duration_s") or args.duration)
        total_cpu = watch.cpu_s
        steady = [h for h in history if h[0] >= WARMUP_S]
        if len(steady) >= 2:
            steady_pct = 100 * (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
        else:
            steady_pct = float("nan")
        size = sum(f.stat().st_size for f in out.iterdir())
        per_hour = size / dur * 3600
        rows = rec.rows()
        sizes = {f.name: f.stat().st_size for f in out.iterdir()}
        kernel = rec.collectors.get("kernel", {}).get("status")
        ps = rec.table("probe_stats").to_pylist()
        lost = sum(x["lost"] or 0 for x in ps if x["probe"].startswith("kernel."))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    cpu_pct = 100 * total_cpu / dur
    hwm_mb = watch.hwm_bytes / 1e6
    verdict = {
        "cpu": steady_pct <= TARGETS["cpu_pct"],
        "rss": hwm_mb <= TARGETS["rss_mb"],
        "size": per_hour / 1e6 <= TARGETS["mb_per_hour"],
    }

    def ok(b: bool) -> str:
        return "met" if b else "NOT met"

    md = [
        *benchdoc.section_header(f"## Recorder cost ({dur:.0f} s run{', /proc sampler only' if args.no_bpf else ''})",
                                 load0, sudo=True),
        f"Target: `bench/workload_pingpong.py --work {args.work}` for {args.duration:g} s; kernel probes: {kernel}; "
        f"lost kernel events: {lost}.",
        "",
        "| measure | value | target | |",
        "|---|---:|---:|---|",
        f"| recorder CPU, steady state (after {WARMUP_S:g} s) | {steady_pct:.2f}% of one core | <= 5% | {ok(verdict['cpu'])} |",
        f"| recorder CPU, whole run incl. start-up (BPF compile) | {cpu_pct:.2f}% of one core | | |",
        f"| recorder peak RSS (VmHWM) | {hwm_mb:.0f} MB | <= 200 MB | {ok(verdict['rss'])} |",
        f"| recorder RSS at the end | {watch.rss_bytes / 1e6:.0f} MB | | |",
        f"| recording size | {size / 1e6:.2f} MB in {dur:.0f} s = {per_hour / 1e6:.0f} MB per hour | <= 100 MB/h | "
        f"{ok(verdict['size'])} |",
        "",
        "Rows and bytes per table: " + ", ".join(
            f"{n} {rows.get(n[:-6], '')} rows / {sizes[n] / 1e3:.0f} kB" for n in sorted(sizes) if n.endswith(".arrow")) + ".",
        "",
    ]
    text = "\n".join(md)
    print(text)
    if args.doc:
        benchdoc.replace_section(args.doc, args.section, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
