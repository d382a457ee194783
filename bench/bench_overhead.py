"""Throughput cost of tracing an inference-like workload: autoglm-trace vs bcc's tools.

The workload (bench/workload_pingpong.py: process pairs ping-ponging over pipes + a numpy decode
loop, several hundred thousand context switches/s here) runs for a fixed time, in each round:

  untraced      the workload alone
  autoglm       autoglm-trace record -q --no-gpu -o TMP -- workload   (every probe; the recorder
                releases the workload only once its probes are attached)
  runqlat       runqlat-bpfcc (system-wide, its default) started and attached first
  offcputime    offcputime-bpfcc -f, likewise (it needs a kprobe on finish_task_switch: on a kernel
                without kprobes it fails to start; that is recorded, not hidden)

Modes run interleaved in a shuffled order per round (this machine is noisy), and each traced run
is compared with the untraced run of the same round: the ratio of ops/s (round trips + decode
steps). Reported: median ratio and the min..max over rounds, the switch rate, and the events /
lost counts autoglm-trace stored in probe_stats.

  sudo .venv/bin/python bench/bench_overhead.py [--rounds 5] [--duration 10] [--doc docs/benchmarks-overhead.md]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchdoc

WORKLOAD = str(Path(__file__).resolve().parent / "workload_pingpong.py")
TARGETS = "full tracer <= 3% throughput loss, and no more than runqlat-bpfcc alone"


def _workload(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, WORKLOAD, "--duration", str(args.duration), "--pairs", str(args.pairs),
           "--decoders", str(args.decoders), "--work", str(args.work)]
    # --pin: the whole workload on one CPU (every hop a switch on that CPU), tracers on the others.
    return cmd if args.pin is None else ["taskset", "-c", str(args.pin), *cmd]


def _tracer_cpus(args: argparse.Namespace):
    """preexec_fn keeping a tracer (the recorder, a bcc tool) off the pinned workload's CPU."""
    if args.pin is None:
        return None
    others = set(os.sched_getaffinity(0)) - {args.pin}
    return (lambda: os.sched_setaffinity(0, others)) if others else None


def _last_json(text: str) -> dict:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"ops_per_s"' in line:
            return json.loads(line)
    raise RuntimeError(f"no workload result in output: {text[-500:]!r}")


def run_untraced(args: argparse.Namespace) -> dict:
    rc, out, err = benchdoc.run_json(_workload(args), timeout=args.duration + 60)
    if rc != 0:
        raise RuntimeError(f"workload failed: {err[-500:]}")
    return _last_json(out)


def run_autoglm(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        out_dir = tmp / "rec"
        cmd = [*benchdoc.autoglm_trace(), "record", "-q", "--no-gpu", "-o", str(out_dir), "--", *_workload(args)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=_tracer_cpus(args))
        watch = benchdoc.ProcWatch(p.pid)
        out, err = p.communicate(timeout=args.duration + 120)
        watch.stop()
        if p.returncode != 0:
            raise RuntimeError(f"record failed ({p.returncode}): {err[-500:]}")
        r = _last_json(out)
        from autoglm_trace.analysis.reader import Recording

        rec = Recording(out_dir)
        ps = rec.table("probe_stats").to_pylist()
        kernel = [x for x in ps if x["probe"].startswith("kernel.")]
        r["probe_events"] = sum(x["events"] or 0 for x in kernel)
        r["probe_lost"] = sum(x["lost"] or 0 for x in kernel)
        r["kernel_status"] = rec.collectors.get("kernel", {}).get("status")
        r["kernel_reason"] = rec.collectors.get("kernel", {}).get("reason")
        r["recorder_cpu_s"] = watch.cpu_s
        r["recorder_hwm_bytes"] = watch.hwm_bytes
        r["recording_bytes"] = sum(f.stat().st_size for f in out_dir.iterdir())
        return r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_bcc(args: argparse.Namespace, tool: str, extra: list[str]) -> dict:
    exe = benchdoc.bcc_tool(tool)
    if exe is None:
        raise RuntimeError(f"{tool}-bpfcc is not installed")
    from autoglm_trace.probes import headers

    headers.apply()  # bcc's tools need BCC_KERNEL_SOURCE too when the headers are the cached tree
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([exe, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         preexec_fn=_tracer_cpus(args))
    try:
        # Attached once the tool says it is tracing (it prints that after attaching its probes).
        deadline = time.monotonic() + 60
        seen = b""
        while time.monotonic() < deadline:
            if p.poll() is not None:
                err = p.stderr.read().decode(errors="replace").strip().splitlines()
                raise RuntimeError(f"{tool}-bpfcc exited with {p.returncode} before tracing: "
                                   f"{err[-1] if err else seen.decode(errors='replace')[-200:]}")
            ready, _, _ = select.select([p.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(p.stdout.fileno(), 4096)
                seen += chunk
                if b"Tracing" in seen or b"Hit Ctrl-C" in seen:
                    break
        else:
            raise RuntimeError(f"{tool}-bpfcc did not start tracing within 60 s")
        r = run_untraced(args)
        return r
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        else:
            p.communicate()


MODES = {
    "untraced": run_untraced,
    "autoglm-trace record": run_autoglm,
    "runqlat-bpfcc": lambda a: run_bcc(a, "runqlat", []),
    "offcputime-bpfcc": lambda a: run_bcc(a, "offcputime", ["-f"]),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=10.0, help="workload seconds per run (default 10)")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--decoders", type=int, default=1)
    ap.add_argument("--work", type=int, default=3000,
                    help="workload --work per round trip (default 3000: ~70k switches/s here; 0: pure hand-offs)")
    ap.add_argument("--pin", type=int, metavar="CPU",
                    help="run the whole workload on this CPU (taskset) and the tracers on the others")
    ap.add_argument("--section", default="bench_overhead", help="section name in --doc (one per workload shape)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--doc", type=Path, help="replace this benchmark's section of a markdown file")
    ap.add_argument("--json", type=Path, help="write every run's raw result here")
    ap.add_argument("--render", type=Path, help="re-render the markdown from a --json file of an earlier run")
    args = ap.parse_args(argv)
    if args.render:
        raw = json.loads(args.render.read_text())
        for k, v in raw.get("args", {}).items():  # the shape of the run that made the file
            if k in ("duration", "pairs", "decoders", "work", "rounds", "pin"):
                setattr(args, k, v)
        md = render(args, raw["runs"], raw["failed"], raw.get("command"), raw.get("machine"))
        print(md)
        if args.doc:
            benchdoc.replace_section(args.doc, args.section, md)
        return 0
    if os.geteuid() != 0:
        print("bench_overhead: needs root (BPF); run with sudo", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    failed: dict[str, str] = {}
    for rnd in range(args.rounds):
        order = list(MODES)
        rng.shuffle(order)
        for mode in order:
            if mode in failed:
                runs[mode].append({})
                continue
            try:
                r = MODES[mode](args)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                failed[mode] = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
                runs[mode].append({})
                print(f"round {rnd + 1}: {mode}: FAILED: {failed[mode]}", file=sys.stderr)
                continue
            runs[mode].append(r)
            print(f"round {rnd + 1}: {mode}: {r['ops_per_s']:.0f} ops/s, {r['switches_per_s']:.0f} switches/s",
                  file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "failed": failed, "command": benchdoc.command_line(),
                                         "machine": benchdoc.machine_facts(), "args": vars(args)},
                                        indent=1, default=str))
    md = render(args, runs, failed)
    print(md)
    if args.doc:
        benchdoc.replace_section(args.doc, args.section, md)
    return 0


def _throughput(r: dict, b: dict) -> float:
    """Traced over untraced throughput of one round: the mean of the normalised round-trip and decode
    rates (round trips alone when the workload has no decode loop)."""
    rt = r["round_trips_per_s"] / b["round_trips_per_s"]
    if not b["decode_steps_per_s"]:
        return rt
    return (rt + r["decode_steps_per_s"] / b["decode_steps_per_s"]) / 2


def render(args: argparse.Namespace, runs: dict[str, list[dict]], failed: dict[str, str],
           command: str | None = None, machine: str | None = None) -> str:
    base = runs["untraced"]
    pin = getattr(args, "pin", None)
    shape = ("inference-like workload" if args.work else "stress workload (pure hand-offs)") if pin is None \
        else f"pinned ping-pong (the workload on CPU {pin}, tracers on the other CPUs)"
    lines = [
        f"## Overhead, {shape}: throughput traced vs untraced",
        "",
        f"Command: `sudo {command or benchdoc.command_line()}`  ",
        f"Machine: {machine or benchdoc.machine_facts()}  ",
        f"Workload: `{'' if pin is None else f'taskset -c {pin} '}bench/workload_pingpong.py --duration {args.duration:g} --pairs {args.pairs} "
        f"--decoders {args.decoders} --work {args.work}` ({args.rounds} interleaved rounds, shuffled order per round).  ",
        f"Target: {TARGETS}.",
        "",
        "Throughput = the mean of the two normalised rates, round trips/s and decode steps/s, each divided by "
        "the untraced run of the same round (the two compete for the CPUs, so their plain sum is not "
        "monotonic in overhead: a tracer that slows the hand-offs leaves more CPU to the decode loop).",
        "",
        "| mode | round trips/s | decode steps/s | switches/s | round trips vs untraced | throughput vs untraced: "
        "median (min..max) | cost |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    medians: dict[str, float] = {}
    for mode, rs in runs.items():
        if mode in failed and not any(rs):
            lines.append(f"| {mode} | failed | | | | | {failed[mode]} |")
            continue
        rt = statistics.median(r["round_trips_per_s"] for r in rs if r)
        dec = statistics.median(r["decode_steps_per_s"] for r in rs if r)
        sw = statistics.median(r["switches_per_s"] for r in rs if r)
        pairs = [(r, b) for r, b in zip(rs, base) if r and b]
        rt_ratio = [r["round_trips_per_s"] / b["round_trips_per_s"] for r, b in pairs]
        ratios = [_throughput(r, b) for r, b in pairs]
        if mode == "untraced":
            lines.append(f"| {mode} | {rt:,.0f} | {dec:,.0f} | {sw:,.0f} | 1 | 1 | - |")
            continue
        med = statistics.median(ratios)
        medians[mode] = med
        lines.append(f"| {mode} | {rt:,.0f} | {dec:,.0f} | {sw:,.0f} | {statistics.median(rt_ratio):.3f} | "
                     f"{med:.3f} ({min(ratios):.3f}..{max(ratios):.3f}) | {100 * (1 - med):.1f}% |")
    lines.append("")
    ag = [r for r in runs["autoglm-trace record"] if r]
    if ag:
        ev = statistics.median(r["probe_events"] / args.duration for r in ag)
        lost = sum(r["probe_lost"] for r in ag)
        cpu = statistics.median(r["recorder_cpu_s"] for r in ag)
        hwm = max(r["recorder_hwm_bytes"] for r in ag)
        size = statistics.median(r["recording_bytes"] for r in ag)
        lines.append(f"autoglm-trace: kernel probes {ag[0]['kernel_status']}"
                     + (f" ({ag[0]['kernel_reason']})" if ag[0].get("kernel_reason") else "")
                     + f"; {ev:,.0f} probe events/s handled, {lost} lost over all runs; recorder CPU "
                     f"{cpu:.2f} s per run ({100 * cpu / args.duration:.1f}% of one core, including BPF "
                     f"compile at start), peak RSS {hwm / 2**20:.0f} MiB, recording {size / 2**20:.1f} MiB per run.")
        lines.append("")
    a, q = medians.get("autoglm-trace record"), medians.get("runqlat-bpfcc")
    if a is not None:
        met1 = 1 - a <= 0.03
        verdict = [f"full tracer cost {100 * (1 - a):.1f}% -> {'met' if met1 else 'NOT met'} (<= 3%)"]
        if q is not None:
            verdict.append(f"vs runqlat-bpfcc {100 * (1 - q):.1f}% -> {'met' if a >= q - 0.005 else 'NOT met'} "
                           "(no more than runqlat, 0.5 pt tolerance for noise)")
        lines.append("Targets: " + "; ".join(verdict) + ".")
    for mode, why in failed.items():
        lines.append(f"\n{mode} could not run here: `{why}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
