"""report / export over recordings made by the real recorder (not hand-written tables).

A target serves "requests" (spans through the span API) on CPU 0 while the test starts a CPU hog
pinned to the same CPU, outside the target. Ground truth: the hog's pid (we started it) and the
span count the target printed. With the kernel probes the report must show the hog as the task that
took the CPU; without them (--no-bpf) it must say the kernel signals were not checked and why.
The GPU is the simulated NVML backend (the one sanctioned fake).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from autoglm_trace.analysis.reader import Recording

PY = sys.executable

TARGET = textwrap.dedent(
    """
    import sys, time
    from autoglm_trace import span
    open(sys.argv[1], "w").close()  # started: the test starts its hog now
    n = 0
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        with span("generate", prompt_tokens=16) as s:
            x = 0
            for i in range(60_000):
                x += i * i
            s.set(output_tokens=8)
        n += 1
        time.sleep(0.005)
    print("spans", n, flush=True)
    """
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID", "SUDO_USER")}
    env["AUTOGLM_TRACE_NVML"] = "simulated"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.ids: set[str] = set()
        self._script = False

    def handle_starttag(self, tag, attrs):
        self._script = tag == "script"
        d = dict(attrs)
        if d.get("id"):
            self.ids.add(d["id"])

    def handle_endtag(self, tag):
        self._script = False

    def handle_data(self, data):
        if not self._script:
            self.text.append(data)


def _record(cli: list[str], out: Path, bpf: bool) -> tuple[int, int]:
    """Record TARGET (nice 10) pinned to CPU 0 with a hog on CPU 0 from 1 s to 3 s of the target's life;
    returns (spans, hog pid)."""
    args = [*cli, "record", "-q", "-o", str(out)] + ([] if bpf else ["--no-bpf"])
    # The target runs at nice 10 so that the (nice 0) hog wins CPU 0 while both are runnable.
    started = out.parent / "started"
    rec = subprocess.Popen([*args, "--", "taskset", "-c", "0", "nice", "-n", "10", PY, "-c", TARGET, str(started)],
                           env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60  # the kernel probes compile first
        while not started.exists() and rec.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the target never started"
        time.sleep(1.0)
        hog = subprocess.Popen(["taskset", "-c", "0", PY, "-c", "import time\nt=time.monotonic()+2\nwhile time.monotonic()<t: pass"])
        hog.wait(timeout=30)
        stdout, stderr = rec.communicate(timeout=60)
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
    assert rec.returncode == 0, stderr
    spans = int(next(ln.split()[1] for ln in stdout.splitlines() if ln.startswith("spans ")))
    return spans, hog.pid


def _report_and_export(cli: list[str], out: Path, tmp_path: Path) -> tuple[_Text, dict]:
    r = subprocess.run([*cli, "report", str(out), "-o", str(tmp_path / "r.html")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    doc = _Text()
    doc.feed((tmp_path / "r.html").read_text())
    r = subprocess.run([*cli, "export", str(out), "--perfetto", str(tmp_path / "t.json")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return doc, json.loads((tmp_path / "t.json").read_text())


@pytest.mark.root
@pytest.mark.bpf
def test_report_and_export_of_a_kernel_recording(cli, tmp_path):
    out = tmp_path / "rec"
    spans, hog = _record(cli, out, bpf=True)
    rec = Recording(out)
    assert rec.table("spans").num_rows == spans
    doc, trace = _report_and_export(cli, out, tmp_path)
    text = " ".join(doc.text)
    assert "timeline" in doc.ids
    # The table of who took the CPU agrees with the raw preemptions rows summed here in plain Python.
    waits: dict[int, int] = {}
    for r in rec.table("preemptions").to_pylist():
        waits[r["preemptor_pid"]] = waits.get(r["preemptor_pid"], 0) + (r["wait_ns"] or 0)
    top = max(waits, key=waits.get)
    section = text[text.index("Who took the CPU"):text.index("What was recorded")]
    first_row = section.split("share", 1)[1]
    assert first_row.lstrip().split(")")[0].endswith(f"({top}"), section
    assert f"{waits[top] / 1e6:,.1f}" in section
    ev = trace["traceEvents"]
    assert sum(1 for e in ev if e["ph"] == "X" and e.get("cat") == "request") == spans
    root = rec.target["pid"]
    assert any(e["ph"] == "M" and e["name"] == "process_name" and e["pid"] == root for e in ev)
    states = [e for e in ev if e["ph"] == "C" and e["pid"] == root and e["name"].startswith("state ")]
    assert states and max(e["args"]["run-queue %"] for e in states) > 10  # it waited behind the hog
    gpu = [e for e in ev if e["ph"] == "C" and e["name"] == "memory" and e["pid"] >= 1 << 30]
    assert gpu, "simulated GPU counters"
    # Last: the analysis must run on what the real recorder writes (nullable columns included).
    assert "diagnosis unavailable" not in text, text[text.index("Incidents"):][:400]


def test_report_of_a_recording_without_kernel_probes(cli, tmp_path):
    out = tmp_path / "rec"
    spans, _ = _record(cli, out, bpf=False)
    doc, trace = _report_and_export(cli, out, tmp_path)
    text = " ".join(doc.text)
    assert "Not checked" in text and "disabled with --no-bpf" in text
    assert "run-queue wait" in text  # listed as not checked
    assert "Who took the CPU" not in text
    assert sum(1 for e in trace["traceEvents"] if e["ph"] == "X" and e.get("cat") == "request") == spans
    assert "sched" in trace["otherData"]["not_recorded"]
