"""Recorder memory over a long run of the bundled demo (server + load + one incident).

Runs ``autoglm-trace demo --record DIR --no-analyze --duration S --incident INCIDENT`` and polls the
recorder process (the ``record`` child of the demo) once a second from /proc: VmRSS and VmHWM, and
its CPU time. Reports the peak (VmHWM), RSS at the start / end, and the slope of RSS over the second
half (a leak shows as a positive slope).

  sudo .venv/bin/python bench/bench_demo_rss.py [--duration 600] [--incident cpu-hog] [--doc PATH]
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

TARGET_MB = 100.0


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _recorder(demo_pid: int, out: Path) -> int | None:
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # the recorder is demo's own child; its target (forked by the recorder, same argv until exec)
        # is the recorder's child, so the parent test keeps the watch off the server
        if b"record" in argv and str(out).encode() in argv and _ppid(int(d)) == demo_pid:
            return int(d)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--incident", default="cpu-hog")
    ap.add_argument("--doc", type=Path)
    ap.add_argument("--section", default="bench_demo_rss")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_demo_rss: needs root (BPF)", file=sys.stderr)
        return 2
    load0 = benchdoc.load_average()
    tmp = Path(tempfile.mkdtemp(prefix="bench-demo-rss-"))
    out = tmp / "rec"
    samples: list[tuple[float, int]] = []
    try:
        cmd = [*benchdoc.autoglm_trace(), "demo", "--duration", str(args.duration), "--incident", args.incident,
               "--incident-at", str(min(8.0, args.duration / 3)), "--record", str(out), "--no-analyze"]
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        pid, watch = None, None
        while p.poll() is None:
            time.sleep(1.0)
            if pid is None:
                pid = _recorder(p.pid, out)
                if pid is not None:
                    watch = benchdoc.ProcWatch(pid, every_s=0.5)
                continue
            if watch is not None and watch.rss_bytes:
                samples.append((time.monotonic() - t0, watch.rss_bytes))
        _, err = p.communicate()
        if watch is not None:
            watch.stop()
        if p.returncode != 0 or watch is None:
            print(f"demo failed ({p.returncode}): {err[-600:]}", file=sys.stderr)
            return 1
        size = sum(f.stat().st_size for f in out.iterdir()) if out.exists() else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    half = [s for s in samples if s[0] >= samples[-1][0] / 2] if samples else []
    slope = 0.0
    if len(half) > 2:
        n = len(half)
        mx = sum(t for t, _ in half) / n
        my = sum(r for _, r in half) / n
        slope = sum((t - mx) * (r - my) for t, r in half) / max(1e-9, sum((t - mx) ** 2 for t, _ in half))
    peak = watch.hwm_bytes / 2**20
    text = "\n".join([
        *benchdoc.section_header(f"### Recorder memory over a {args.duration:g} s demo run (incident {args.incident})",
                                 load0),
        "| recorder peak RSS (VmHWM) | RSS first sample / last | RSS slope, second half | recorder CPU | recording |",
        "|---|---|---|---|---|",
        f"| {peak:.0f} MB | {samples[0][1] / 2**20:.0f} / {samples[-1][1] / 2**20:.0f} MB | "
        f"{slope / 1024:.1f} KiB/s | {watch.cpu_s:.1f} s ({100 * watch.cpu_s / args.duration:.1f}% of a core) | "
        f"{size / 2**20:.1f} MB |",
        "", f"Target: peak RSS <= {TARGET_MB:.0f} MB -- {'met' if peak <= TARGET_MB else 'NOT met'}.",
    ]) + "\n"
    print(text)
    if args.doc:
        benchdoc.replace_section(args.doc, args.section, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
