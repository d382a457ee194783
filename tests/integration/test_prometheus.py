"""``record --prometheus``: scrape /metrics with a real HTTP client during a real recording, parse it
with prometheus_client's own parser, and check every value against the recording read back after.

Why membership checks: the exporter sees each batch the moment the writer does, so whatever a scrape
returns must be a value the recording holds (a cumulative /proc counter of that pid at some sample)
or a prefix sum of a bucketed kernel table in file order -- a wrong mapping, a double count or a
stale value would not be in that set. At the end the workload goes quiet and the span histogram must
equal, bucket for bucket, a numpy histogram of the recorded spans.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoglm_trace.analysis.reader import Recording
from autoglm_trace.tracer.exporter import SPAN_BUCKETS_S, series_names

WORKLOAD = textwrap.dedent(
    """
    import json, os, sys, time
    from autoglm_trace import span
    done, go = sys.argv[1], sys.argv[2]
    n = {"generate": 0, "tokenize": 0}
    keep = []
    t = time.time()
    while time.time() - t < 2.5:
        with span("generate"):
            keep.append(bytearray(256 * 1024))      # page faults
            time.sleep(0.005 + (n["generate"] % 7) * 0.006)
        n["generate"] += 1
        with span("tokenize"):
            sum(range(20000))                      # on-CPU work
        n["tokenize"] += 1
    open(done, "w").write(json.dumps(n))
    t = time.time()
    while not os.path.exists(go) and time.time() - t < 30:
        time.sleep(0.05)
    """
)


def _scrape(url: str) -> dict[str, list]:
    """{sample name: [(labels, value), ...]} through prometheus_client's parser."""
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers.get_content_type() == "text/plain"
        text = r.read().decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        assert fam.name.startswith("autoglm_trace_")
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _value(snap: dict, sample: str, **labels: str) -> float | None:
    for lab, v in snap.get(sample, []):
        if all(lab.get(k) == x for k, x in labels.items()):
            return v
    return None


class _Stderr:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def wait_for(self, needle: str, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                if needle in line:
                    return line
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not seen on stderr: {''.join(self.lines)[-2000:]}")


def _record(cli: list[str], tmp_path: Path, kernel: bool,
            gpu_sim: bool = False) -> tuple[Recording, list[dict], dict, dict]:
    script = tmp_path / "work.py"
    script.write_text(WORKLOAD)
    done, go, rec_dir = tmp_path / "done.json", tmp_path / "go", tmp_path / "rec"
    args = [*cli, "record", "-q", "--prometheus", "127.0.0.1:0", "-o", str(rec_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_TRACE_NVML")}
    if gpu_sim:
        env["AUTOGLM_TRACE_NVML"] = "simulated"  # the sanctioned fake driver
    else:
        args.append("--no-gpu")
    if not kernel:
        args.append("--no-bpf")
    proc = subprocess.Popen([*args, "--", sys.executable, str(script), str(done), str(go)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    err = _Stderr(proc)
    try:
        url = err.wait_for("serving metrics on", 60).split("serving metrics on", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        snaps = []
        while not done.exists():
            snaps.append(_scrape(url))
            time.sleep(0.25)
            assert proc.poll() is None, "".join(err.lines)
        counts = json.loads(done.read_text())
        # The workload is quiet now: wait until every span it sent has reached the exporter.
        deadline = time.monotonic() + 10
        while True:
            final = _scrape(url)
            got = {k: _value(final, "autoglm_trace_span_latency_seconds_count", name=k) for k in counts}
            if got == {k: float(v) for k, v in counts.items()} or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        go.write_text("")
        assert proc.wait(timeout=60) == 0, "".join(err.lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The endpoint closes with the recording.
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)
    return Recording(rec_dir), snaps, final, counts


def _check_proc_metrics(rec: Recording, snaps: list[dict]) -> None:
    pid = rec.target["pid"]
    samples = rec.table("proc_samples").filter(pc.equal(rec.table("proc_samples")["pid"], pid))
    assert samples.num_rows > 5
    recorded = {c: set(np.asarray(samples[c].to_pylist(), dtype=float)) for c in
                ("ctx_voluntary", "ctx_involuntary", "minflt", "majflt", "rss_bytes")}
    checks = [("autoglm_trace_context_switches_total", {"kind": "voluntary"}, "ctx_voluntary"),
              ("autoglm_trace_context_switches_total", {"kind": "involuntary"}, "ctx_involuntary"),
              ("autoglm_trace_page_faults_total", {"kind": "minor"}, "minflt"),
              ("autoglm_trace_page_faults_total", {"kind": "major"}, "majflt"),
              ("autoglm_trace_process_rss_bytes", {}, "rss_bytes")]
    seen = 0
    prev: dict[str, float] = {}
    for snap in snaps:
        for name, labels, column in checks:
            v = _value(snap, name, pid=str(pid), **labels)
            if v is None:
                continue
            seen += 1
            assert v in recorded[column], f"{name}{labels} = {v} is no recorded {column} of pid {pid}"
            if name.endswith("_total"):
                key = name + column
                assert v >= prev.get(key, 0), f"{name} went backwards"
                prev[key] = v
    assert seen >= 10, "the target's /proc metrics never showed up in a scrape"
    assert _value(snaps[-1], "autoglm_trace_context_switches_total", pid=str(pid), comm="python3",
                  kind="voluntary") is not None or _value(
        snaps[-1], "autoglm_trace_context_switches_total", pid=str(pid), kind="voluntary") is not None
    minflt = prev.get("autoglm_trace_page_faults_totalminflt", 0)
    assert minflt > 1000  # 256 KiB per request touched: thousands of minor faults


def _check_spans(rec: Recording, final: dict, counts: dict) -> None:
    spans = rec.table("spans")
    names = np.asarray(spans["name"].to_pylist(), dtype=object)
    lat = (spans["end_ns"].to_numpy() - spans["ts_ns"].to_numpy()) / 1e9
    for name, n in counts.items():
        mine = lat[names == name]
        assert mine.size == n  # the recording got every span
        assert _value(final, "autoglm_trace_span_latency_seconds_count", name=name) == n
        assert _value(final, "autoglm_trace_span_latency_seconds_sum", name=name) == pytest.approx(mine.sum(), rel=1e-9)
        for le in SPAN_BUCKETS_S:
            got = _value(final, "autoglm_trace_span_latency_seconds_bucket", name=name, le=str(le))
            assert got == float((mine <= le).sum()), f"{name} le={le}"
        assert _value(final, "autoglm_trace_span_latency_seconds_bucket", name=name, le="+Inf") == n
    # generate spans sleep 5..41 ms: they must straddle the 10/25/50 ms bounds.
    gen = lat[names == "generate"]
    assert (gen <= 0.01).any() and (gen > 0.025).any()
    assert _value(final, "autoglm_trace_rows_total", table="spans") == spans.num_rows


def _prefix_sums(values: np.ndarray) -> set[float]:
    return {0.0, *np.cumsum(values).astype(float).tolist()}


def test_scraped_metrics_match_the_recording(cli, tmp_path):
    rec, snaps, final, counts = _record(cli, tmp_path, kernel=False)
    assert len(snaps) >= 5
    served = {n for s in snaps for n in s}
    assert {"autoglm_trace_context_switches_total", "autoglm_trace_page_faults_total",
            "autoglm_trace_process_rss_bytes", "autoglm_trace_span_latency_seconds_bucket"} <= served
    assert served <= series_names()  # nothing served that the dashboard test does not know
    _check_proc_metrics(rec, snaps)
    _check_spans(rec, final, counts)


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.slow
def test_kernel_metrics_match_the_kernel_tables(cli, tmp_path):
    rec, snaps, final, counts = _record(cli, tmp_path, kernel=True)
    assert rec.collectors["kernel"]["status"] == "ok", rec.collectors["kernel"]
    _check_proc_metrics(rec, snaps)
    _check_spans(rec, final, counts)
    pid = rec.target["pid"]
    sched = rec.table("sched").filter(pc.equal(rec.table("sched")["pid"], pid))
    assert sched.num_rows > 0
    hist = np.array(sched["runq_hist"].to_pylist(), dtype=float)
    counts_ok = _prefix_sums(hist.sum(axis=1))
    waits = np.cumsum(np.nan_to_num(np.array(sched["runq_wait_ns"].to_pylist(), dtype=float)) / 1e9)
    hits = 0
    for snap in [*snaps, final]:
        n = _value(snap, "autoglm_trace_runq_latency_seconds_count", pid=str(pid))
        if n is None:
            continue
        hits += 1
        assert n in counts_ok, f"run-queue count {n} is no prefix sum of the recorded histograms"
        s = _value(snap, "autoglm_trace_runq_latency_seconds_sum", pid=str(pid))
        idx = np.flatnonzero(np.isclose(np.cumsum(hist.sum(axis=1)), n))
        assert n == 0 or np.isclose(waits[idx], s, rtol=1e-9).any()
        # Buckets are cumulative and end at the count.
        b = [v for lab, v in snap["autoglm_trace_runq_latency_seconds_bucket"] if lab.get("pid") == str(pid)]
        assert b == sorted(b) and b[-1] == n
    assert hits >= 3
    assert _value(final, "autoglm_trace_runq_latency_seconds_count", pid=str(pid)) > 0
    lost_recorded = _prefix_sums(np.nan_to_num(np.array(rec.table("probe_stats")["lost"].to_pylist(), dtype=float)))
    lost_served = sum(v for _, v in final.get("autoglm_trace_lost_events_total", []))
    assert lost_served in lost_recorded
    assert _value(final, "autoglm_trace_probe_events_total") is not None


def test_gpu_gauges_are_a_recorded_sample(cli, tmp_path):
    """With the simulated NVML driver: every scrape's GPU gauges are one recorded gpu_devices row
    (memory, utilisation, power and throttle flags of the same sample, not a mix)."""
    rec, snaps, final, _ = _record(cli, tmp_path, kernel=False, gpu_sim=True)
    dev = rec.table("gpu_devices")
    assert dev.num_rows > 5, rec.collectors.get("gpu")
    rows = {(r["gpu"], float(r["mem_used_bytes"]), float(r["util_gpu_pct"]) / 100, r["power_mw"] / 1000,
             int(r["clocks_event_reasons"] or 0) & 0x4 != 0)
            for r in dev.to_pylist()}
    checked = 0
    for snap in [*snaps, final]:
        for lab, used in snap.get("autoglm_trace_gpu_memory_used_bytes", []):
            g = lab["gpu"]
            key = (int(g), used, _value(snap, "autoglm_trace_gpu_utilization_ratio", gpu=g),
                   _value(snap, "autoglm_trace_gpu_power_watts", gpu=g),
                   _value(snap, "autoglm_trace_gpu_throttle_active", gpu=g, reason="sw_power_cap") == 1.0)
            assert any(key[0] == r[0] and key[1] == r[1] and key[4] == r[4] and abs(key[2] - r[2]) < 1e-6
                       and abs(key[3] - r[3]) < 1e-9 for r in rows), f"GPU gauges {key} are no recorded sample"
            checked += 1
    assert checked >= 5
