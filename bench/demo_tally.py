"""Is the demo's diagnosis stable? Run ``demo --incident cpu-hog --record`` N times (default 10) while an
unrelated steady load (50 % duty on another CPU) runs, analyse each, and count the runs in which the
injected hog is the first culprit of the first cause of the incident that covers it. The tally
replaces the ``<!-- demo-tally -->`` section of docs/demo.md, with the host load.

    sudo .venv/bin/python bench/demo_tally.py [--runs 10] [--metrics all|vllm] [--no-background] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "demo.md"
CLI = [sys.executable, "-m", "autoglm_trace.tracer.cli"]
LOAD = """
import os, sys, time
os.sched_setaffinity(0, [int(sys.argv[1])])
open("/proc/self/comm", "w").write("steady-load")
while True:
    t = time.monotonic() + 0.05
    while time.monotonic() < t:
        pass
    time.sleep(0.05)
"""


def one(i: int, metrics: str, tmp: Path) -> dict:
    rec = tmp / f"run{i}"
    subprocess.run([*CLI, "demo", "--incident", "cpu-hog", "--record", str(rec), "--no-analyze", "--metrics", metrics,
                    "--record-arg=--no-gpu"], capture_output=True, text=True, timeout=300)
    a = subprocess.run([*CLI, "analyze", str(rec), "--json"], capture_output=True, text=True, timeout=300)
    if a.returncode:
        return {"run": i, "ok": False, "why": a.stderr.strip()[-200:]}
    d = json.loads(a.stdout)
    hog_at = 8.0 + 1.0  # --incident-at 8 s after the load starts (~1 s after the recording)
    cover = [x for x in d["incidents"] if x["offset_s"] <= hog_at + 3 and x["offset_s"] + x["duration_s"] >= hog_at + 3]
    out = {"run": i, "incidents": len(d["incidents"]), "shapes": [x["shape"] for x in d["incidents"]]}
    if not cover:
        return {**out, "ok": False, "why": "no incident covers the hog"}
    c = cover[0]["causes"][0]
    cul = (c.get("culprits") or [{}])[0]
    out.update(cause=c["kind"], culprit=cul.get("comm"), shape=cover[0]["shape"],
               ok=c["kind"] == "cpu_contention" and cul.get("comm") == "noisy-hog")
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--metrics", choices=("all", "vllm"), default="all")
    p.add_argument("--no-background", action="store_true")
    p.add_argument("--keep", metavar="DIR", help="keep the recordings (runN) in DIR to inspect a failing run")
    a = p.parse_args()
    bg = None
    cpus = sorted(os.sched_getaffinity(0))
    if not a.no_background and len(cpus) > 1:
        bg = subprocess.Popen([sys.executable, "-c", LOAD, str(cpus[-1])])
    load0 = os.getloadavg()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="demo-tally-") as tmp:
            keep = Path(a.keep) if a.keep else Path(tmp)
            keep.mkdir(parents=True, exist_ok=True)
            for i in range(a.runs):
                rows.append(one(i + 1, a.metrics, keep))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if bg is not None:
            bg.kill()
            bg.wait()
    load1 = os.getloadavg()
    hits = sum(r["ok"] for r in rows)
    lines = [f"<!-- demo-tally {a.metrics} -->",
             f"**Demo stability ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `--metrics {a.metrics}`"
             f"{', steady 50 % load on CPU ' + str(cpus[-1]) if bg else ''}):** the hog was the first culprit of the "
             f"incident covering it in **{hits} of {len(rows)}** runs. Load average before / after: "
             f"{load0[0]:.2f} / {load1[0]:.2f}. Command: `sudo .venv/bin/python bench/demo_tally.py --metrics "
             f"{a.metrics}` (`make demo-tally`).", "",
             "| run | incidents | shapes | covering incident | first cause | first culprit | ok |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r.get('incidents', '-')} | {', '.join(r.get('shapes', []))} | "
                     f"{r.get('shape', '-')} | {r.get('cause', '-')} | {r.get('culprit', '-')} | "
                     f"{'yes' if r['ok'] else 'no: ' + r.get('why', 'other cause or culprit')} |")
    lines.append(f"<!-- /demo-tally {a.metrics} -->")
    text = DOC.read_text()
    start, end = f"<!-- demo-tally {a.metrics} -->", f"<!-- /demo-tally {a.metrics} -->"
    block = "\n".join(lines)
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        heading = "" if "## Stability of the diagnosis" in text else "## Stability of the diagnosis\n\n"
        text = text.rstrip() + "\n\n" + heading + block + "\n"
    DOC.write_text(text)
    print(f"{hits}/{len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
