"""The real-GPU check behind bench/gpu_check.sh (run that; this is its body).

    .venv/bin/python bench/gpu_check.py [--doc docs/benchmarks-gpu.md]
    .venv/bin/python bench/gpu_check.py --analyze REC LOG [--no-nvml-bench] [--doc PATH]

1. Pre-flight: a real NVML (never the simulated backend) with at least one device, and PyTorch with
   CUDA. Without them it says so on one line and exits 77 (no GPU) or 78 (no PyTorch / CUDA): nothing
   is measured and nothing is written.
2. ``autoglm-trace record --gpu-interval 100 -- python3 bench/gpu_workload.py LOG``: the workload grows
   its GPU memory in ~48 steps until ``torch.OutOfMemoryError`` (about 30 s).
3. Checks, through the reader (``--analyze REC LOG`` runs only these, on an existing recording):
   * NVML per-process memory (``gpu_processes.used_bytes`` of the workload pid) against the
     workload's own ``torch.cuda.memory_reserved()`` at each step: NVML also counts the CUDA context,
     so the difference should be a steady few hundred MiB -- the check passes when its median is in
     [0, 2 GiB] and at least 80 % of the steps are within one step size (or 512 MiB) of that median;
   * ``oom_postmortem`` reports a CUDA OOM of the workload;
   * the sampler: NVML calls and microseconds per sample, per call, and the CPU of a 100 ms sampling
     loop (bench/bench_nvml.py --backend real).
4. The figures replace the ``gpu_check`` section of docs/benchmarks-gpu.md (or ``--doc``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchdoc  # bench/ is on sys.path: this script runs as bench/gpu_check.py

ROOT = Path(__file__).resolve().parent.parent
NO_GPU, NO_TORCH = 77, 78
MiB = 1 << 20


def preflight() -> tuple[int, str, dict[str, Any]] | None:
    """None when a real GPU and PyTorch with CUDA are here; else (exit status, one line, facts)."""
    if os.environ.get("AUTOGLM_TRACE_NVML", "").lower() in ("sim", "simulated"):
        return NO_GPU, ("AUTOGLM_TRACE_NVML=simulated is set: this check needs the real driver "
                        "(unset it)"), {}
    try:
        import pynvml
    except ImportError:
        return NO_GPU, "no NVIDIA GPU: the nvidia-ml-py package (pynvml) is not installed", {}
    try:
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded ...
        return NO_GPU, f"no NVIDIA GPU present: NVML cannot start ({e}; libnvidia-ml.so.1 / driver missing)", {}
    try:
        n = pynvml.nvmlDeviceGetCount()
        facts: dict[str, Any] = {"devices": n, "driver": _s(pynvml.nvmlSystemGetDriverVersion())}
        if n:
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            facts["gpu0"] = _s(pynvml.nvmlDeviceGetName(h))
            facts["gpu0_memory_bytes"] = int(pynvml.nvmlDeviceGetMemoryInfo(h).total)
    finally:
        pynvml.nvmlShutdown()
    if not n:
        return NO_GPU, "no NVIDIA GPU present: NVML started but reports 0 devices", facts
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__, torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        return NO_TORCH, f"a GPU ({facts.get('gpu0')}) but PyTorch does not import: pip install torch", facts
    version, avail = probe.stdout.split()[:2]
    facts["torch"] = version
    if avail != "True":
        return NO_TORCH, f"a GPU ({facts.get('gpu0')}) but torch {version} has no CUDA (a CPU-only build?)", facts
    return None


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _cli() -> list[str]:
    exe = Path(sys.executable).parent / "autoglm-trace"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "autoglm_trace.tracer.cli"]


def record(tmp: Path) -> tuple[Path, Path, float, str]:
    rec, log = tmp / "rec", tmp / "workload.jsonl"
    cmd = [*_cli(), "record", "-o", str(rec), "--gpu-interval", "100", "--duration", "200", "-q"]
    if os.geteuid() != 0:
        cmd.append("--no-bpf")  # without root: /proc + NVML only
    cmd += ["--", sys.executable, str(ROOT / "bench" / "gpu_workload.py"), str(log)]
    t = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=230)
    return rec, log, time.monotonic() - t, (r.stderr or "")[-2000:]


def read_log(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def check_memory(rec_path: Path, log: Path) -> dict[str, Any]:
    """NVML's per-process used memory against torch's reserved memory at each growth step."""
    import numpy as np

    from autoglm_trace.analysis.reader import Recording

    rec = Recording(rec_path)
    steps = [e for e in read_log(log) if e["event"] in ("grow", "oom")]
    if not steps:
        return {"ok": False, "why": "the workload logged no growth step"}
    pid = steps[0]["pid"]
    chunk = int(steps[0].get("chunk") or 0)
    gp = rec.table("gpu_processes")
    if not gp.num_rows:
        return {"ok": False, "why": "gpu_processes is empty: NVML gave no per-process memory"}
    pids = np.asarray(gp.column("pid").to_numpy(zero_copy_only=False))
    ts = np.asarray(gp.column("ts_ns").to_numpy(zero_copy_only=False))[pids == pid] + rec.wall_offset_ns
    used = np.asarray(gp.column("used_bytes").to_numpy(zero_copy_only=False), dtype=float)[pids == pid]
    if not len(ts):
        return {"ok": False, "why": f"NVML never listed the workload's pid {pid} (container pid namespace?)"}
    order = np.argsort(ts)
    ts, used = ts[order], used[order]
    diffs, lags = [], []
    for e in steps:
        # The first NVML sample after the step (NVML samples every 100 ms; 1 s at most).
        i = int(np.searchsorted(ts, e["wall_ns"]))
        if i < len(ts) and ts[i] - e["wall_ns"] <= 1_000_000_000:
            diffs.append(used[i] - e["reserved"])
            lags.append((ts[i] - e["wall_ns"]) / 1e6)
    if not diffs:
        return {"ok": False, "why": "no NVML sample within 1 s of any growth step"}
    d = np.array(diffs)
    med = float(np.median(d))
    tol = max(chunk, 512 * MiB)
    within = float(np.mean(np.abs(d - med) <= tol))
    peak_reserved = max(e["reserved"] for e in steps)
    ok = 0 <= med <= 2 * 1024 * MiB and within >= 0.8
    return {"ok": ok, "steps": len(steps), "matched": len(diffs), "pid": pid, "chunk_mib": round(chunk / MiB),
            "median_nvml_minus_reserved_mib": round(med / MiB, 1),
            "p10_mib": round(float(np.percentile(d, 10)) / MiB, 1), "p90_mib": round(float(np.percentile(d, 90)) / MiB, 1),
            "within_tolerance": round(within, 3), "tolerance_mib": round(tol / MiB),
            "peak_reserved_gib": round(peak_reserved / 2**30, 2), "peak_nvml_gib": round(float(used.max()) / 2**30, 2),
            "median_sample_lag_ms": round(float(np.median(lags)), 1),
            "why": "" if ok else "NVML memory does not track torch.cuda.memory_reserved() within tolerance"}


def check_oom(rec_path: Path, log: Path) -> dict[str, Any]:
    from autoglm_trace.analysis.oom import oom_postmortem
    from autoglm_trace.analysis.reader import Recording

    events = read_log(log)
    pid = events[0]["pid"] if events else None
    oomed = any(e["event"] == "oom" for e in events)
    kills = [k for k in oom_postmortem(Recording(rec_path))["kills"] if k["kind"] == "cuda"]
    mine = [k for k in kills if k.get("pid") == pid]
    k = mine[0] if mine else (kills[0] if kills else None)
    ok = oomed and k is not None
    return {"ok": ok, "workload_oomed": oomed, "reported": k is not None,
            "pid_matches": bool(mine), "verdict": k.get("verdict") if k else None,
            "gpu_gib_at_oom": round((k.get("gpu_bytes") or 0) / 2**30, 2) if k else None,
            "detected_by": k.get("detected_by") if k else None,
            "why": "" if ok else ("the workload never hit CUDA OOM" if not oomed else "oom reported no CUDA OOM")}


def nvml_bench() -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "bench" / "bench_nvml.py"), "--backend", "real", "--json",
           "--seconds", "10", "--samples", "300"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return {"ok": False, "why": (r.stderr.strip().splitlines() or ["bench_nvml failed"])[-1]}
    out = json.loads(r.stdout)
    ps = out["per_sample"]
    calls = ps["calls_per_sample_per_device"]["fast"] or 1
    us = ps["us_per_sample_per_device"]
    loop = out["loop_no_events"]
    return {"ok": True, "devices": ps["devices"], "calls_per_sample_per_device": calls,
            "us_per_sample_per_device": us["fast_median"], "us_per_sample_p90": us["fast_p90"],
            "us_per_call": round(us["fast_median"] / calls, 1), "slow_tick_us": us["slow_tick_median"],
            "loop_cpu_pct_of_one_core": loop["cpu_pct_of_one_core"],
            "loop_sampling_thread_us": loop["sampling_thread_us_per_sample"]["median"],
            "loop_with_events_cpu_pct": out["loop_with_events"]["cpu_pct_of_one_core"]}


def render(res: dict[str, Any]) -> str:
    f = res.get("facts", {})
    m, o, n = res["memory"], res["oom"], res.get("nvml") or {}
    lines = [f"Run {res['when']} on {platform.node() or '?'}: {f.get('gpu0', '?')} x{f.get('devices', '?')}, "
             f"driver {f.get('driver', '?')}, torch {f.get('torch', '?')}, Python {platform.python_version()}, "
             f"{'root (kernel probes on)' if res.get('root') else 'not root (--no-bpf)'}; "
             f"whole check {res.get('seconds', 0):.0f} s (limit 300 s).", "",
             "| check | result | figures |", "|---|---|---|"]

    def row(name: str, r: dict[str, Any], figures: str) -> None:
        lines.append(f"| {name} | {'pass' if r.get('ok') else 'FAIL: ' + r.get('why', '')} | {figures} |")

    row("NVML per-process memory vs `torch.cuda.memory_reserved()`", m,
        f"{m.get('matched', 0)} of {m.get('steps', 0)} steps matched to the next NVML sample (median lag "
        f"{m.get('median_sample_lag_ms', '?')} ms); NVML - reserved: median {m.get('median_nvml_minus_reserved_mib', '?')} MiB "
        f"(p10 {m.get('p10_mib', '?')}, p90 {m.get('p90_mib', '?')}; the CUDA context), "
        f"{100 * m.get('within_tolerance', 0):.0f}% within {m.get('tolerance_mib', '?')} MiB; peak reserved "
        f"{m.get('peak_reserved_gib', '?')} GiB, NVML {m.get('peak_nvml_gib', '?')} GiB")
    row("CUDA OOM reported by `oom`", o,
        f"workload OOMed: {o.get('workload_oomed')}; reported: {o.get('reported')} (pid matches: "
        f"{o.get('pid_matches')}, by {o.get('detected_by')}), verdict {o.get('verdict')}, "
        f"{o.get('gpu_gib_at_oom')} GiB at the OOM")
    if n:
        row("NVML call latency per sample", n,
            f"{n.get('calls_per_sample_per_device', '?')} calls / sample / device; {n.get('us_per_sample_per_device', '?')} us "
            f"per sample per device (p90 {n.get('us_per_sample_p90', '?')}), {n.get('us_per_call', '?')} us per call; "
            f"slow tick (PCIe, ECC) {n.get('slow_tick_us', '?')} us")
        row("GPU sampler's cost", n,
            f"{n.get('loop_cpu_pct_of_one_core', '?')}% of one core at 100 ms ({n.get('loop_with_events_cpu_pct', '?')}% "
            f"with the NVML event thread); sampling thread {n.get('loop_sampling_thread_us', '?')} us per sample")
    lines += ["", "Command: `bash bench/gpu_check.sh` (exit 0: every check passed)."]
    return "\n".join(lines)


def write_doc(doc: Path, text: str) -> None:
    benchdoc.replace_section(doc, "gpu_check", text, new_doc="# GPU\n",
                             heading="## Real-GPU check (bench/gpu_check.sh)\n\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks-gpu.md"))
    ap.add_argument("--analyze", nargs=2, metavar=("REC", "LOG"), help="only the checks, on an existing recording")
    ap.add_argument("--no-nvml-bench", action="store_true", help="skip bench_nvml (sampler cost)")
    ap.add_argument("--keep", action="store_true", help="keep the recording")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    res: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "root": os.geteuid() == 0}
    tmp = None
    if a.analyze:
        rec, log = Path(a.analyze[0]), Path(a.analyze[1])
    else:
        pf = preflight()
        if pf is not None:
            code, msg, _ = pf
            print(f"gpu_check: {msg}. Nothing was measured; run it on a machine with an NVIDIA GPU, its "
                  "driver and PyTorch with CUDA.", file=sys.stderr)
            return code
        res["facts"] = _facts()
        tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        rec, log, res["record_s"], tail = record(tmp)
        if not log.exists() or not (rec / "manifest.json").exists():
            print(f"gpu_check: the recording or the workload log is missing; recorder said: {tail}", file=sys.stderr)
            return 1
    try:
        res["memory"] = check_memory(rec, log)
        res["oom"] = check_oom(rec, log)
        if not a.no_nvml_bench:
            res["nvml"] = nvml_bench()
        res["seconds"] = time.monotonic() - t0
        text = render(res)
        print(text)
        write_doc(Path(a.doc), text)
        ok = all(res[k].get("ok") for k in ("memory", "oom", "nvml") if k in res)
        print(f"gpu_check: {'all checks passed' if ok else 'a check FAILED'}; figures in {a.doc}", file=sys.stderr)
        return 0 if ok else 1
    finally:
        if tmp is not None and not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _facts() -> dict[str, Any]:
    import pynvml

    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        out = {"devices": pynvml.nvmlDeviceGetCount(), "driver": _s(pynvml.nvmlSystemGetDriverVersion()),
               "gpu0": _s(pynvml.nvmlDeviceGetName(h))}
    finally:
        pynvml.nvmlShutdown()
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:
        pass
    return out


if __name__ == "__main__":
    sys.exit(main())
