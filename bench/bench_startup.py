"""Recorder start-up cost: ``record -- /bin/date`` wall time, time to the target's exec, peak RSS.

Each round runs ``autoglm-trace record -q --no-gpu -o DIR -- /bin/date +%s.%N`` (and, interleaved,
the same with ``--no-bpf``) through bench/recorder_peak.py, which runs the CLI in-process and writes
the recorder's own VmHWM / VmRSS at exit (exact, unlike polling; and not the loader helper's, whose
memory is its own process's). The target prints CLOCK_REALTIME at exec, so "to exec" is measured from
just before the recorder is spawned to the moment the traced program runs. One warm-up round first:
the figures are for a warm page cache.

  sudo .venv/bin/python bench/bench_startup.py [--rounds 5] [--doc docs/benchmarks-footprint.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchdoc

WRAP = str(Path(__file__).resolve().parent / "recorder_peak.py")
TARGETS = {"rss_mb": 100.0, "to_exec_s": 1.0}


def one(tmp: Path, no_bpf: bool, extra: list[str]) -> dict:
    out, peak = tmp / "rec", tmp / "peak.json"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, WRAP, str(peak), "record", "-q", "--no-gpu", *(["--no-bpf"] if no_bpf else []),
           *extra, "-o", str(out), "--", "/bin/date", "+%s.%N"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    t1 = time.time()
    if p.returncode != 0:
        raise SystemExit(f"record failed ({p.returncode}): {p.stderr[-600:]}")
    stamp = float(p.stdout.strip().splitlines()[-1])
    info = json.loads(peak.read_text())  # the recording phase (record execs its report: recorder_peak.py)
    report = peak.with_name(peak.name + ".report")
    rep = json.loads(report.read_text()) if report.exists() else {"VmHWM": 0, "VmRSS": info["VmRSS"]}
    report.unlink(missing_ok=True)
    return {"wall_s": t1 - t0, "to_exec_s": stamp - t0, "hwm_mb": max(info["VmHWM"], rep["VmHWM"]) / 2**20,
            "record_mb": info["VmHWM"] / 2**20, "report_mb": rep["VmHWM"] / 2**20,
            "rss_end_mb": rep["VmRSS"] / 2**20, "bcc_imported": info["bcc_imported"],
            "llvm_mapped": info["llvm_mapped"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--doc", type=Path)
    ap.add_argument("--section", default="bench_startup")
    ap.add_argument("extra", nargs="*", help="extra record options (after --)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_startup: needs root (BPF)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    load0 = benchdoc.load_average()
    try:
        one(tmp, False, args.extra)  # warm the page cache (and any compile cache)
        rows: dict[str, list[dict]] = {"bpf": [], "no-bpf": []}
        for _ in range(args.rounds):
            rows["bpf"].append(one(tmp, False, args.extra))
            rows["no-bpf"].append(one(tmp, True, args.extra))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [
        *benchdoc.section_header(f"### record start-up and peak RSS ({args.rounds} interleaved rounds, warm cache)",
                                 load0),
        "| mode | wall, median (min-max) | record start -> target exec, median (min-max) | recorder VmHWM, median (max) "
        "| recording / closing report, median | VmRSS at exit | bcc imported in the recorder | LLVM mapped in the recorder |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, rs in rows.items():
        def col(k: str, fmt: str = "{:.2f}", rs: list[dict] = rs) -> str:
            xs = [r[k] for r in rs]
            return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"
        hwm = [r["hwm_mb"] for r in rs]
        lines.append(
            f"| {mode} | {col('wall_s')} s | {col('to_exec_s')} s | {statistics.median(hwm):.0f} MB "
            f"({max(hwm):.0f} MB) | {statistics.median(r['record_mb'] for r in rs):.0f} / "
            f"{statistics.median(r['report_mb'] for r in rs):.0f} MB | {statistics.median(r['rss_end_mb'] for r in rs):.0f} MB | "
            f"{'yes' if any(r['bcc_imported'] for r in rs) else 'no'} | "
            f"{'yes' if any(r['llvm_mapped'] for r in rs) else 'no'} |")
    b = rows["bpf"]
    lines += ["", f"Targets: peak RSS <= {TARGETS['rss_mb']:.0f} MB -- "
              f"{'met' if max(r['hwm_mb'] for r in b) <= TARGETS['rss_mb'] else 'NOT met'}; "
              f"start -> exec <= {TARGETS['to_exec_s']:.0f} s warm -- "
              f"{'met' if statistics.median(r['to_exec_s'] for r in b) <= TARGETS['to_exec_s'] else 'NOT met'} "
              "(median)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.doc:
        benchdoc.replace_section(args.doc, args.section, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
