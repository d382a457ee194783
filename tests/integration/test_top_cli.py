"""``top`` and ``record --live`` as a user runs them (real processes, the installed CLI). Without a
terminal the live view prints its last frame when the target exits."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from autoglm_trace.analysis.reader import Recording

BUSY = textwrap.dedent(
    """
    import time
    from autoglm_trace import span
    keep = []
    t = time.time()
    while time.time() - t < 2.0:
        with span("generate"):
            keep.append(bytearray(64 * 1024))
            time.sleep(0.02)
    time.sleep(0.3)
    """
)


def run(cli, *args, timeout=120):
    return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=timeout)


def test_top_shows_the_target_and_its_spans(cli, tmp_path):
    script = tmp_path / "busy.py"
    script.write_text(BUSY)
    r = run(cli, "top", "--no-bpf", "--no-gpu", "--window", "5", "--", sys.executable, str(script))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "autoglm-trace top pid" in out and "window 5 s" in out
    for panel in ("Request latency", "CPU / scheduler", "Memory", "Block I/O", "GPU", "Lost events"):
        assert panel in out, out
    assert "generate" in out  # the spans the child sent reached the view
    assert "(/proc)" in out  # no kernel probes: switches and faults come from /proc
    assert "stopped (target exited)" in r.stderr


def test_top_refuses_to_write(cli):
    r = run(cli, "top", "-o", "somewhere", "-p", "1")
    assert r.returncode == 2 and "top: shows, does not record" in r.stderr
    r = run(cli, "top")
    assert r.returncode == 2 and "top: no target" in r.stderr and "Traceback" not in r.stderr


def test_record_live_writes_the_recording_and_shows_the_view(cli, tmp_path):
    script = tmp_path / "busy.py"
    script.write_text(BUSY)
    rec = tmp_path / "rec"
    r = run(cli, "record", "--live", "--no-bpf", "--no-gpu", "-o", str(rec), "--", sys.executable, str(script))
    assert r.returncode == 0, r.stderr
    assert "Request latency" in r.stderr and "generate" in r.stderr
    spans = Recording(rec).table("spans")
    assert spans.num_rows >= 50  # ~2 s of 20 ms requests


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.slow
def test_top_with_kernel_probes_shows_scheduler_figures(cli, tmp_path):
    script = tmp_path / "busy.py"
    script.write_text(BUSY)
    r = run(cli, "top", "--no-gpu", "--window", "5", "--", sys.executable, str(script))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "involuntary sw (kernel)" in out and "page faults (kernel)" in out
    line = next(x for x in out.splitlines() if "run-queue p50 / p99" in x)
    assert re.search(r"\d+(\.\d+)? (us|ms|s) / \d+(\.\d+)? (us|ms|s)", line), line
    assert "kernel.sched" in out  # probe_stats: the loss accounting is shown per probe
