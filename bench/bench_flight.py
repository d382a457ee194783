"""Steady-state cost of the always-on flight recorder (``record --ring 5m`` on the whole host).

Starts ``autoglm-trace record --ring RING`` as a real process, waits until its collectors run plus a
warm-up, then samples its CPU time (/proc/PID/stat utime+stime, all threads) and RSS (VmRSS) once a
second for DURATION. At the end a SIGUSR1 snapshot records the ring's own accounting (bytes, rows,
time covered) in its manifest, which is read back here. Prints a markdown table.

    sudo .venv/bin/python bench/bench_flight.py                    # 60 s
    sudo .venv/bin/python bench/bench_flight.py --duration 1800    # the 30-minute run
    sudo .venv/bin/python bench/bench_flight.py --load             # with a busy workload beside it

``--load`` runs a pipe ping-pong pair and a memory churner next to the recorder so the kernel
probes see a realistic event rate (a thousand context switches a second and more).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")

LOAD = r"""
import os, time
r1, w1 = os.pipe(); r2, w2 = os.pipe()
if os.fork() == 0:
    while True:
        os.read(r1, 1); os.write(w2, b"x")
keep = []
t = time.monotonic()
while True:
    os.write(w1, b"x"); os.read(r2, 1)
    time.sleep(0.0005)
    if time.monotonic() - t > 0.2:   # churn memory: allocate and free ~20 MB five times a second
        keep = [b"y" * (1 << 20) for _ in range(20)]; keep = []
        t = time.monotonic()
"""


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "autoglm-trace"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "autoglm_trace.tracer.cli"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60, help="measured seconds (default 60)")
    ap.add_argument("--warmup", type=float, default=10, help="seconds after the collectors start (default 10)")
    ap.add_argument("--ring", default="5m")
    ap.add_argument("--ring-bytes", default="24M")
    ap.add_argument("--load", action="store_true", help="run a busy workload beside the recorder")
    ap.add_argument("--status-every", type=float, default=60,
                    help="the recorder's status line period (ring size and RSS over time), seconds")
    ap.add_argument("--extra", default="", help="extra record options, space separated (e.g. '--bucket 1000')")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-flight-"))
    log = work / "flight.log"
    load = subprocess.Popen([sys.executable, "-c", LOAD]) if a.load else None
    cmd = [*cli(), "record", "--ring", a.ring, "--ring-bytes", a.ring_bytes, "-o", str(work / "snaps"),
           "--tail", "0", *a.extra.split()]
    env = {**os.environ, "AUTOGLM_TRACE_FLIGHT_STATUS_S": str(a.status_every)}
    with open(log, "w") as lf:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=lf, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while "collectors running" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                print(log.read_text(), file=sys.stderr)
                return 1
            time.sleep(0.2)
        time.sleep(a.warmup)
        c0, t0 = cpu_s(proc.pid), time.monotonic()
        rss = []
        cpu_per_s = []
        last_c, last_t = c0, t0
        while time.monotonic() - t0 < a.duration:
            time.sleep(1.0)
            c, t = cpu_s(proc.pid), time.monotonic()
            cpu_per_s.append((c - last_c) / (t - last_t))
            last_c, last_t = c, t
            rss.append(rss_bytes(proc.pid))
        c1, t1 = cpu_s(proc.pid), time.monotonic()
        proc.send_signal(signal.SIGUSR1)
        snap = None
        deadline = time.monotonic() + 60
        while snap is None and time.monotonic() < deadline:
            found = [p for p in (work / "snaps").glob("*-signal") if not p.name.startswith(".")]
            snap = found[0] if found else None
            time.sleep(0.2)
        ring = json.loads((snap / "manifest.json").read_text())["flight"]["ring"] if snap else {}
        snap_bytes = sum(p.stat().st_size for p in snap.iterdir()) if snap else 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        if load is not None:
            load.kill()
            load.wait()
    n = len(rss)
    half = rss[n // 2:] if n >= 4 else rss
    slope = 0.0
    if len(half) >= 2:
        xs = list(range(len(half)))
        mx, my = sum(xs) / len(xs), sum(half) / len(half)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, half)) / max(sum((x - mx) ** 2 for x in xs), 1)
    cpu_sorted = sorted(cpu_per_s)
    print(f"command: {' '.join(cmd)}{'  (with --load workload)' if a.load else ''}")
    print(f"measured {t1 - t0:.0f} s after {a.warmup:.0f} s warm-up; host: {os.cpu_count()} CPUs\n")
    print("| metric | value |")
    print("|---|---|")
    print(f"| CPU, mean (share of one core) | {100 * (c1 - c0) / (t1 - t0):.2f} % |")
    if cpu_sorted:
        print(f"| CPU, p95 of 1 s samples | {100 * cpu_sorted[int(0.95 * (len(cpu_sorted) - 1))]:.2f} % |")
    print(f"| RSS min / mean / max | {min(rss) / 2**20:.1f} / {sum(rss) / n / 2**20:.1f} / {max(rss) / 2**20:.1f} MiB |")
    print(f"| RSS slope, second half | {slope / 1024:.1f} KiB/s |")
    if ring:
        print(f"| ring bytes (Arrow buffers) | {ring['bytes'] / 2**20:.1f} MiB of {ring['max_bytes'] / 2**20:.0f} MiB |")
        print(f"| ring rows / time covered | {ring['rows']} / {ring['covered_ns'] / 1e9:.0f} s |")
        print(f"| rows evicted by age / by the size limit | {ring['evicted_rows']} / {ring['dropped_rows']} |")
        print(f"| snapshot on disk | {snap_bytes / 2**20:.1f} MiB |")
    status = [ln.split("flight: ", 1)[1] for ln in log.read_text().splitlines() if "flight: status:" in ln]
    if status:
        print(f"\nthe recorder's own status lines (every {a.status_every:g} s):\n")
        print("\n".join(f"    {ln}" for ln in status))
    print(f"\nlog: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
