"""`record --ring -- CMD`: a slow request among the target's spans (span API) saves a `spike`
snapshot; steady requests do not. No root needed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from autoglm_trace.analysis.reader import Recording

SERVER = r"""
import time
from autoglm_trace.span_client import flush, span
for i in range(40):                      # steady: ~20 ms each
    with span("generate", output_tokens=10):
        time.sleep(0.02 + (i % 5) * 0.001)
time.sleep(2.5)                          # quiet: a check in between sees only normal requests
with span("generate", output_tokens=10):  # the spike: ~15x slower for the same work
    time.sleep(0.3)
for i in range(5):
    with span("generate", output_tokens=10):
        time.sleep(0.02)
flush()
time.sleep(2.5)
"""


def test_slow_request_saves_a_spike_snapshot(cli: list[str], tmp_path: Path):
    out = tmp_path / "flight"
    r = subprocess.run([*cli, "record", "--ring", "30s", "-o", str(out), "--no-bpf", "--no-gpu", "--trigger", "spike",
                        "--tail", "0.5", "--", sys.executable, "-c", SERVER], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    snaps = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert len(snaps) == 1 and snaps[0].name.endswith("-spike"), (snaps, r.stderr)
    rec = Recording(snaps[0])
    spans = rec.table("spans").to_pylist()
    lat = sorted(s["end_ns"] - s["ts_ns"] for s in spans)
    median = lat[len(lat) // 2]
    # A slow request is there: the designed one, or one a loaded box made slow earlier (it counts too).
    assert len(spans) >= 20 and lat[-1] >= 3 * median and median < 100_000_000
    trig = rec.manifest["trigger"]
    assert re.match(r"\d+ slow request\(s\) \(generate\): up to \d+ ms vs typical \d+ ms", trig["detail"]), trig
    # Fired after a slow request ended, within the once-a-second check (plus an interval).
    ends = [s["end_ns"] for s in spans if s["end_ns"] - s["ts_ns"] >= 1.5 * median]
    assert any(e <= trig["ts_ns"] <= e + 1_500_000_000 for e in ends), (trig, ends)
