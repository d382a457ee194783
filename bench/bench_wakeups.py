"""What the waker aggregation (the ``wakeups`` probe family) costs on the context-switch stress workload.

Interleaved rounds (shuffled order per round, this machine is noisy) of the stress workload of
bench_overhead.py (``--work 0``: pure pipe hand-offs, every switch a wakeup of a target thread):

  untraced          the workload alone
  all families      autoglm-trace record -q --no-gpu -- workload
  without wakeups   the same with ``--probes=-wakeups``

Each traced run is compared with the untraced run of its round (ops/s ratio). The cost of the waker
family is the difference of the two traced ratios, per round, in percentage points of the untraced
throughput; the target is <= 1 pp (median over rounds).

  sudo .venv/bin/python bench/bench_wakeups.py [--rounds 5] [--duration 10] [--doc docs/benchmarks-overhead.md]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import benchdoc
from bench_overhead import _last_json, _workload, run_untraced

TARGET = "the waker aggregation adds <= 1 percentage point to the stress workload's throughput loss"


def run_record(args: argparse.Namespace, extra: list[str]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-wakeups-"))
    try:
        out_dir = tmp / "rec"
        cmd = [*benchdoc.autoglm_trace(), "record", "-q", "--no-gpu", *extra, "-o", str(out_dir), "--", *_workload(args)]
        rc, out, err = benchdoc.run_json(cmd, timeout=args.duration + 120)
        if rc != 0:
            raise RuntimeError(f"record failed ({rc}): {err[-500:]}")
        r = _last_json(out)
        from autoglm_trace.analysis.reader import Recording

        rec = Recording(out_dir)
        ps = [x for x in rec.table("probe_stats").to_pylist() if x["probe"].startswith("kernel.")]
        r["events"] = {p: sum(x["events"] or 0 for x in ps if x["probe"] == p) for p in {x["probe"] for x in ps}}
        r["lost"] = sum(x["lost"] or 0 for x in ps)
        return r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


MODES = {
    "untraced": run_untraced,
    "all families": lambda a: run_record(a, []),
    "without wakeups": lambda a: run_record(a, ["--probes=-wakeups"]),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--decoders", type=int, default=1)
    ap.add_argument("--work", type=int, default=0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--doc", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_wakeups: needs root (BPF); run with sudo", file=sys.stderr)
        return 2
    load0 = os.getloadavg()
    rng = random.Random(args.seed)
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for rnd in range(args.rounds):
        order = list(MODES)
        rng.shuffle(order)
        for mode in order:
            try:
                r = MODES[mode](args)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"round {rnd + 1}: {mode}: FAILED: {e}", file=sys.stderr)
                return 1
            r["load1"] = os.getloadavg()[0]
            runs[mode].append(r)
            print(f"round {rnd + 1}: {mode}: {r['ops_per_s']:.0f} ops/s, {r['switches_per_s']:.0f} switches/s",
                  file=sys.stderr)
    load1 = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "args": vars(args)}, indent=1, default=str))
    md = render(args, runs, load0, load1)
    print(md)
    if args.doc:
        benchdoc.replace_section(args.doc, "bench_wakeups", md)
    return 0


def render(args: argparse.Namespace, runs: dict[str, list[dict]], load0: tuple, load1: tuple) -> str:
    base = [r["ops_per_s"] for r in runs["untraced"]]
    ratio = {m: [r["ops_per_s"] / b for r, b in zip(runs[m], base, strict=True)] for m in ("all families",
                                                                                         "without wakeups")}
    cost_pp = [100 * (w - a) for a, w in zip(ratio["all families"], ratio["without wakeups"], strict=True)]
    med = statistics.median(cost_pp)
    ev = runs["all families"][0].get("events", {})
    wake_ev = sum(r.get("events", {}).get("kernel.wakeups", 0) for r in runs["all families"]) / max(
        1, len(runs["all families"])) / args.duration
    lines = [
        "## Cost of the waker aggregation (`wakeups` family), stress workload",
        "",
        f"Command: `{benchdoc.command_line()}`  ",
        f"Machine: {benchdoc.machine_facts()}; load average {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} "
        f"before, {load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f} after (other work shares this VM: compare "
        "within a round only)  ",
        f"Workload: `bench/workload_pingpong.py --duration {args.duration:g} --pairs {args.pairs} --decoders "
        f"{args.decoders} --work {args.work}` ({args.rounds} interleaved rounds, shuffled order per round).  ",
        f"Target: {TARGET}.",
        "",
        "| mode | median ops/s | median of traced / untraced (same round) | min..max |",
        "|---|---|---|---|",
        f"| untraced | {statistics.median(base):,.0f} | 100% | |",
    ]
    for m in ("all families", "without wakeups"):
        ops = statistics.median(r["ops_per_s"] for r in runs[m])
        rr = ratio[m]
        lines.append(f"| {m} | {ops:,.0f} | {100 * statistics.median(rr):.1f}% | "
                     f"{100 * min(rr):.1f}%..{100 * max(rr):.1f}% |")
    lines += [
        "",
        f"Waker family cost per round (without-wakeups ratio minus all-families ratio): "
        f"{', '.join(f'{x:+.1f}' for x in cost_pp)} pp; **median {med:+.1f} pp** -> "
        f"{'met' if med <= 1.0 else 'not met'} (target <= 1 pp).  ",
        f"Switch rate untraced: {statistics.median(r['switches_per_s'] for r in runs['untraced']):,.0f}/s; "
        f"waker-family events handled in the kernel: {wake_ev:,.0f}/s; events lost: "
        f"{sum(r.get('lost', 0) for m in ('all families', 'without wakeups') for r in runs[m])}; "
        f"families' event counts of one run: {json.dumps(ev, sort_keys=True)}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
