"""summary's whole-life totals from the kernel probes agree with the kernel's own wait4 rusage of the
spawned target -- including 40 short-lived children and each task's final (death) switch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import autoglm_trace_cmd

pytestmark = [pytest.mark.root, pytest.mark.bpf]

SCRIPT = (
    "for i in $(seq 40); do /bin/true; done; "
    f"{sys.executable} -c 'import time\nx=[bytearray(4096) for _ in range(20000)]\nfor i in range(150): time.sleep(0.004)'"
)


def test_kernel_totals_match_wait4(tmp_path):
    rec = tmp_path / "rec"
    r = subprocess.run([*autoglm_trace_cmd(), "record", "-q", "--no-gpu", "-o", str(rec), "--", "/bin/bash", "-c", SCRIPT],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    s = json.loads(subprocess.run([*autoglm_trace_cmd(), "summary", str(rec), "--json"], capture_output=True,
                                  text=True, timeout=60).stdout)
    ru = json.loads((rec / "manifest.json").read_text())["target"]["rusage"]
    tot = s["totals"]
    for name, tol in (("ctx_switches_voluntary", 0.02), ("page_faults_minor", 0.02)):
        assert tot[name]["source"] == "kernel", tot[name]
        assert abs(tot[name]["value"] - ru[name]) <= tol * ru[name] + 2, (name, tot[name], ru[name])
    assert tot["ctx_switches_voluntary"]["value"] > 190  # 150 sleeps + 41 processes' switches
    assert tot["page_faults_major"]["source"] == "kernel"
    assert abs(tot["ctx_switches_involuntary"]["value"] - ru["ctx_switches_involuntary"]) <= 0.1 * ru["ctx_switches_involuntary"] + 10
