"""A serving engine recorded with ``record --scrape`` alone (no spans, no latency log): ``analyze`` finds
the incident from the engine's own histograms and names its cause and culprit from the kernel.

The engine (tests/fakes/engine_sim.py) serves exposition text whose metric names and bucket layouts
are copied from vllm/v1/metrics/loggers.py (vllm-project/vllm) and
python/sglang/srt/metrics/collector.py (sgl-project/sglang), and does its work on one CPU. A CPU hog
pinned to that CPU starts mid-run and lasts to the end: one sustained-shift incident, CPU contention
by the hog, and the engine's phases say the requests ran slower.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import autoglm_trace_cmd

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.slow]

SIM = Path(__file__).resolve().parents[1] / "fakes" / "engine_sim.py"
HOG = """
import os, sys, time
os.sched_setaffinity(0, [int(sys.argv[1])])
open("/proc/self/comm", "w").write("noisy-hog")
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_scrape_only_recording_names_the_incident_and_its_cause(tmp_path, engine):
    # The last CPU: demos and other tests pin to CPU 0; the recorder keeps off the engine's CPU.
    port, cpu = _port(), max(os.sched_getaffinity(0))
    rec, ready = tmp_path / "rec", tmp_path / "ready"
    duration, hog_at = 24.0, 10.0
    url = f"http://127.0.0.1:{port}/metrics"
    recorder = subprocess.Popen(
        [*autoglm_trace_cmd(), "record", "-o", str(rec), "--no-gpu", "-q", "--scrape", url,
         "--scrape-interval", "0.5", "--", sys.executable, str(SIM), "--engine", engine, "--port", str(port),
         "--duration", str(duration), "--cpu", str(cpu), "--ready", str(ready), "--prefill-ms", "10", "--rate", "2",
         "--token-ms", "4", "--tokens", "16"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hogs: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert recorder.poll() is None, recorder.communicate()
            assert time.monotonic() < deadline, "the engine did not start"
            time.sleep(0.1)
        t_ready = time.monotonic()
        urllib.request.urlopen(url, timeout=5).read()
        time.sleep(max(0.0, hog_at - (time.monotonic() - t_ready)))
        # Three spinning processes of one program (folded into one culprit by comm): on a shared
        # host the engine's CPU share must drop clearly, not from 1/4 to 1/5.
        hogs += [subprocess.Popen([sys.executable, "-c", HOG, str(cpu), str(duration + 5)]) for _ in range(3)]
        out, err = recorder.communicate(timeout=120)
        assert recorder.returncode == 0, err
    finally:
        for p in (*hogs, recorder):
            if p.poll() is None:
                p.kill()
                p.wait()
    a = subprocess.run([*autoglm_trace_cmd(), "analyze", str(rec), "--json"], capture_output=True, text=True,
                       timeout=120)
    assert a.returncode == 0, a.stderr
    d = json.loads(a.stdout)
    assert d["requests"] is None and d["engine"]["used_for_incidents"], d["engine"]
    assert d["engine"]["engine"] == engine
    why = json.dumps([(i["shape"], i["offset_s"], i["headline"]) for i in d["incidents"]], indent=1)
    hog_off = hog_at + 0.5
    covering = [i for i in d["incidents"] if i["offset_s"] <= hog_off + 3 and
                i["offset_s"] + i["duration_s"] >= hog_off + 5]
    assert len(covering) == 1, why
    inc = covering[0]
    assert inc["shape"] == "shift", why
    top = inc["causes"][0]
    assert top["kind"] == "cpu_contention", why
    assert top["culprits"][0]["comm"] == "noisy-hog", why
    assert inc["engine"]["verdict"] == "slower", inc["engine"]
    assert os.path.exists(rec / "scrape_samples.arrow")
