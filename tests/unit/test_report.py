"""The HTML report and the tracks under it, over recordings written with RecordingWriter.

Ground truth comes from reportdata's constants (3 threads each waiting 40 ms per 100 ms bucket
during the CPU hog, RSS growing 40 MiB/s ...), not from the code under test.
"""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import reportdata as RD

from autoglm_trace.analysis import tracks as T
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.report import build_figure, render_html, write_report
from autoglm_trace.tracer import cli

GiB, MiB = 2**30, 2**20


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Recording:
    return Recording(RD.write_recording(tmp_path_factory.mktemp("rec") / "full"))


@pytest.fixture(scope="module")
def proc_only(tmp_path_factory) -> Recording:
    return Recording(RD.write_recording(tmp_path_factory.mktemp("rec") / "proc", full=False))


@pytest.fixture
def no_analysis(monkeypatch):
    """Make the analysis modules unimportable, whether or not they exist yet."""
    monkeypatch.setitem(sys.modules, "autoglm_trace.analysis.diagnosis", None)
    monkeypatch.setitem(sys.modules, "autoglm_trace.analysis.oom", None)


class _Doc(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)


def parse(html: str) -> _Doc:
    d = _Doc()
    d.feed(html)
    d.close()
    return d


def _ts(rel_s: float) -> int:
    return RD.T0 + int(rel_s * 1e9)


def _at(track: T.Track, rel_s: float) -> float:
    i = int(np.argmin(np.abs(track.ts_ns - _ts(rel_s))))
    return float(track.values[i])


# ---------------------------------------------------------------------------------------------
# Tracks against ground truth
# ---------------------------------------------------------------------------------------------
def test_sched_tracks_match_bucket_truth(full):
    tr = {t.name: t for t in T.sched_tracks(full)}
    runq = tr["sched.runq_wait"]
    # 3 threads x 40 ms per 100 ms bucket = 1200 ms of waiting per second during the hog.
    assert _at(runq, 32.0) == pytest.approx(1200.0)
    # Outside: 3 threads x 0.2 ms per bucket = 6 ms/s; after the OOM kill only 2 threads remain.
    assert _at(runq, 10.0) == pytest.approx(6.0)
    assert _at(runq, 55.0) == pytest.approx(4.0)
    assert _at(tr["sched.runq_max"], 32.0) == pytest.approx(9.0)
    assert _at(tr["sched.involuntary"], 32.0) == pytest.approx(3 * 30 * 10)


def test_proc_tracks_rates_and_rss(full):
    tr = {t.name: t for t in T.proc_tracks(full)}
    # RSS: root 2 GiB + worker 1 GiB + 4 MiB per 100 ms sample.
    assert _at(tr["proc.rss"], 10.0) == pytest.approx(2 * GiB + GiB + 100 * 4 * MiB)
    assert _at(tr["proc.rss"], 55.0) == pytest.approx(2 * GiB)  # worker gone
    # CPU: each process 0.09 s per 0.1 s sample.
    assert _at(tr["proc.cpu"], 20.0) == pytest.approx(1.8)
    # involuntary switches: 40 per sample per process during the hog -> 800/s for two.
    assert _at(tr["proc.ctx_involuntary"], 32.0) == pytest.approx(800.0)
    assert _at(tr["proc.ctx_involuntary"], 10.0) == pytest.approx(40.0)


def test_counter_rate_counts_resets_from_zero_and_never_crosses_keys():
    ts = np.array([0, 1, 2, 3, 0, 1], dtype=np.int64) * 1_000_000_000
    v = np.array([10, 20, 5, 15, 100, 130], dtype=np.float64)  # reset between 20 and 5
    key = np.array([1, 1, 1, 1, 2, 2])
    rts, rate, rkey = T.counter_rate(ts, v, key)
    got = sorted(zip(rkey.tolist(), (rts // 10**9).tolist(), rate.tolist()))
    # The one reset rule (autoglm_trace/signals.py, Prometheus' rate()): the interval across the reset
    # counts the new value (5 since the restart), never a negative rate; no pair spans two keys.
    assert [g[:2] for g in got] == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert [g[2] for g in got] == pytest.approx([10.0, 5.0, 10.0, 30.0])


def test_sum_on_grid_handles_jittered_samplers():
    # Two pids stamped a few microseconds apart each sweep: sums must not double or split.
    base = np.arange(10, dtype=np.int64) * 100_000_000
    ts = np.r_[base, base + 3_000]
    key = np.r_[np.full(10, 1), np.full(10, 2)]
    val = np.r_[np.full(10, 5.0), np.full(10, 7.0)]
    gts, tot = T.sum_on_grid(ts, val, key, T.estimate_interval_ns(ts, key))
    assert gts.size == 10 and np.all(tot == 12.0)


def test_downsample_keeps_spikes_and_bounds_points():
    ts = np.arange(100_000, dtype=np.int64) * 1_000_000
    v = np.ones(100_000)
    v[54_321] = 500.0
    dts, dv = T.downsample(ts, v, 2000, "max")
    assert dts.size <= 2000 and dv.max() == 500.0 and np.all(np.diff(dts) > 0)


def test_window_quantiles_match_numpy():
    rng = np.random.default_rng(1)
    ts = rng.integers(0, 10_000_000_000, 5000)
    v = rng.exponential(100, 5000)
    wts, (p50, p99) = T.window_quantiles(ts, v, 1_000_000_000)
    for i, w in enumerate(wts.tolist()):
        sel = np.sort(v[(ts >= w) & (ts < w + 1_000_000_000)])
        assert p50[i] == sel[int(np.floor(0.5 * (sel.size - 1) + 0.5))]
        assert p99[i] == pytest.approx(np.percentile(sel, 99), rel=0.05)


def test_latency_series_and_markers(full):
    lat = T.latency_series(full)
    assert lat.count == 1180
    # p99 in the hog windows is ~600 ms, p50 elsewhere ~85 ms.
    assert lat.p99_ms.max() == pytest.approx(605, abs=6)
    assert np.median(lat.p50_ms) == pytest.approx(85, abs=6)
    kinds = [(m.kind, m.ts_ns) for m in T.markers(full)]
    # The worker's exit right after its OOM kill is folded into the kill's line.
    assert kinds == [("oom_kill", RD.T0 + RD.OOM_AT), ("xid", RD.T0 + 58 * 10**9)]


# ---------------------------------------------------------------------------------------------
# The HTML
# ---------------------------------------------------------------------------------------------
def test_report_is_self_contained_and_escaped(full, tmp_path, no_analysis):
    out = tmp_path / "report.html"
    write_report(full, out)
    html = out.read_text()
    doc = parse(html)
    # The plot div and plotly.js inline: scripts carry no src, nothing is fetched from anywhere.
    assert any(tag == "div" and a.get("id") == "timeline" and "plotly-graph-div" in a.get("class", "")
               for tag, a in doc.tags)
    assert any("Plotly" in s and len(s) > 1_000_000 for s in doc.scripts), "plotly.js is not inline"
    for tag, a in doc.tags:
        for attr in ("src", "href", "data"):
            val = (a.get(attr) or "").strip().lower()
            assert not re.match(r"^(https?:)?//", val), f"<{tag} {attr}={val}> needs the network"
        assert not (tag == "script" and a.get("src")), "external script"
        assert tag != "link", "external stylesheet"
    # The malicious comm / span name never appears raw: escaped in tables, \\u003c in plot JSON.
    assert RD.EVIL not in html
    assert html.count("<script") == len(doc.scripts)
    assert not any("<script>alert" in s for s in doc.scripts)
    text = "".join(doc.text)
    assert RD.EVIL in text  # shown to the reader as text (the OOM victim), not executed
    assert "diagnosis unavailable" in text
    assert "stress-ng" in text and "4,000.0" in text  # top preemptor and its charged wait (50 x 80 ms)
    assert "17:24:10" in text  # the OOM kill's wall-clock time (start 17:23:20 + 50 s)


def test_figure_tracks_and_incident_shading(full):
    inc = [{"start_ns": RD.T0 + RD.SPIKE[0], "end_ns": RD.T0 + RD.SPIKE[1], "latency_ms": 600, "causes": []}]
    fig, drawn = build_figure(full, inc)
    assert {"spans.latency", "sched.runq_wait", "faults.major", "block_io.lat_mean", "proc.rss",
            "gpu.0.mem_used", "gpu.0.util"} <= set(drawn)
    by_name = {tr.name: tr for tr in fig.data}
    runq = by_name["run-queue wait (ms/s)"]
    assert np.nanmax(np.asarray(runq.y, dtype=float)) == pytest.approx(1200.0)
    assert runq.visible is True
    assert by_name["involuntary switches/s (proc) (1/s)"].visible == "legendonly"  # kernel data supersedes
    gpu = by_name["GPU0 memory used (GiB)"]
    assert np.asarray(gpu.y, dtype=float)[0] == pytest.approx(20.0)
    shapes = fig.layout.shapes
    rects = [s for s in shapes if s.type == "rect"]
    lines = [s for s in shapes if s.type == "line"]
    assert rects and str(rects[0].x0).startswith("2025-11-24T17:23:50")
    assert any(str(s.x0).startswith("2025-11-24T17:24:10") for s in lines)  # OOM kill
    # Shared wall-clock x axis on every row.
    assert str(runq.x[0]).startswith("2025-11-24T17:23:2")


def test_report_renders_a_given_diagnosis(full):
    diag = {
        "target": {}, "incidents": [{
            "start": "", "end": "", "start_ns": RD.T0 + RD.SPIKE[0], "end_ns": RD.T0 + RD.SPIKE[1],
            "latency_ms": 604.5, "baseline_ms": 85.0,
            "causes": [{"kind": "cpu_contention", "score": 0.92,
                        "evidence": {"runq_wait_ratio": 200.0, "note": "<img src=x onerror=alert(2)>"},
                        "culprits": [{"pid": 4242, "comm": "<b>stress-ng</b>", "share": 0.97}]},
                       {"kind": "memory_pressure", "score": 0.1, "evidence": {}, "culprits": []}]}],
        "oom": [], "findings": ["worker RSS grows 40 MiB/s"], "not_checked": [{"signal": "nvlink", "reason": "not sampled"}],
    }
    oom = {"kills": [{"pid": 1001, "comm": RD.EVIL, "time": "", "ts_ns": RD.T0 + RD.OOM_AT, "kind": "memcg",
                      "in_target": True, "rss_bytes": 3 * GiB, "gpu_bytes": None, "limit_bytes": 3 * GiB,
                      "growth_bytes_per_s": 40 * MiB, "verdict": "leak in the worker"}]}
    html = render_html(full, diagnosis=diag, oom=oom)
    doc = parse(html)
    text = "".join(doc.text)
    assert "cpu_contention" in text and "97%" in text and "<b>stress-ng</b>" in text
    assert "<b>stress-ng</b>" not in html and "<img src=x" not in html
    assert not any(t == "img" for t, _ in doc.tags)
    assert "leak in the worker" in text and "40.0 MiB/s" in text
    assert "nvlink" in text and "not sampled" in text
    assert "diagnosis unavailable" not in text
    assert "604" in text and "85" in text
    # Causes in the order given (ranked), inside one table.
    assert text.index("cpu_contention") < text.index("memory_pressure")


def test_report_of_proc_only_recording_says_what_is_missing(proc_only, tmp_path, no_analysis):
    out = tmp_path / "r.html"
    write_report(proc_only, out)
    doc = parse(out.read_text())
    text = " ".join(doc.text)
    assert "Not checked" in text
    for signal in ("request latency", "run-queue wait", "block I/O latency", "OOM kills", "GPU"):
        assert signal in text
    assert "not running as root" in text and "libnvidia-ml.so.1" in text
    assert any(a.get("id") == "timeline" for _, a in doc.tags)
    assert "OOM kills were not recorded" in text
    fig, drawn = build_figure(proc_only, [])
    assert "proc.rss" in drawn and "sched.runq_wait" not in drawn and "spans.latency" not in drawn


def test_report_of_empty_recording(tmp_path, no_analysis):
    from autoglm_trace.tracer.writer import RecordingWriter

    w = RecordingWriter(tmp_path / "empty", RD.manifest(tables_ok=False))
    w.close()
    html = render_html(Recording(tmp_path / "empty"))
    text = "".join(parse(html).text)
    assert "Nothing to plot" in text and "Not checked" in text


def test_report_shows_what_diagnose_finds(full):
    """The report's default path runs analysis.diagnosis; what it finds is on the page."""
    from autoglm_trace.analysis.diagnosis import diagnose

    diag = diagnose(full)
    html = render_html(full)
    text = "".join(parse(html).text)
    assert "diagnosis unavailable" not in text
    assert diag["incidents"], "the CPU hog must be found"
    for n, inc in enumerate(diag["incidents"], 1):
        assert f"#{n} ·" in text
        for c in inc["causes"]:
            assert c["kind"] in text
            for cul in c.get("culprits") or []:
                assert f"{cul['comm']} ({cul['pid']})" in text
    # The hog is the top culprit of the first incident, shown in the first row of its table.
    assert diag["incidents"][0]["causes"][0]["culprits"][0]["comm"] == "stress-ng"
    for k in diag["oom"]:
        assert k["verdict"] in text


def test_report_survives_a_failing_diagnosis(full, monkeypatch):
    import autoglm_trace.analysis.diagnosis as d

    def boom(rec, latency_rows=None):
        raise ValueError("synthetic failure")

    monkeypatch.setattr(d, "diagnose", boom)
    text = "".join(parse(render_html(full)).text)
    assert "diagnosis unavailable" in text and "synthetic failure" in text
    assert "OOM post-mortem" in text


def test_report_command(full, tmp_path, capsys):
    out = tmp_path / "cmd.html"
    assert cli.main(["report", str(full.path), "-o", str(out)]) == 0
    assert out.stat().st_size > 1_000_000
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path / "nope"), "-o", str(out)]) == 3
    assert cli.main(["report", str(full.path), "-o", str(tmp_path / "no" / "x.html")]) == 2
    assert cli.main(["report", str(full.path), "--open-browser", "maybe"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def test_report_replaces_a_planted_symlink_instead_of_following_it(full, tmp_path, no_analysis):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "report.html"
    link.symlink_to(victim)
    write_report(full, link)
    assert victim.read_text() == "keep me"
    assert not link.is_symlink() and link.stat().st_size > 1_000_000


def test_manifest_strings_are_escaped(tmp_path, no_analysis):
    from autoglm_trace.tracer.writer import RecordingWriter

    m = RD.manifest(tables_ok=False)
    m["target"]["command"] = ["python3", "</title><script>alert(3)</script>"]
    m["host"]["hostname"] = "<svg onload=alert(4)>"
    m["notes"] = ["<iframe src=//evil>"]
    m["collectors"]["kernel"]["reason"] = "<script>alert(5)</script>"
    w = RecordingWriter(tmp_path / "m", m)
    w.close()
    html = render_html(Recording(tmp_path / "m"))
    for bad in ("<script>alert(3)", "<svg onload", "<iframe", "<script>alert(5)"):
        assert bad not in html


def test_report_of_a_truncated_recording(tmp_path, no_analysis):
    path = RD.write_recording(tmp_path / "cut")
    sched = path / "sched.arrow"
    sched.write_bytes(sched.read_bytes()[:-500])  # a recorder killed mid-write
    man = path / "manifest.json"
    m = json.loads(man.read_text())
    m["complete"] = False
    man.write_text(json.dumps(m))
    text = "".join(parse(render_html(Recording(path))).text)
    assert "INCOMPLETE" in text and "Truncated tables" in text and "sched" in text


def test_report_shows_lost_events(tmp_path, no_analysis):
    from autoglm_trace.tracer.writer import RecordingWriter

    w = RecordingWriter(tmp_path / "lost", RD.manifest())
    w.emit("probe_stats", [
        {"ts_ns": RD.T0, "probe": "sched", "events": 1000, "lost": 0, "reason": None},
        {"ts_ns": RD.T0 + RD.BUCKET, "probe": "sched", "events": 500, "lost": 0, "reason": None},
        {"ts_ns": RD.T0, "probe": "faults", "events": 90, "lost": 7, "reason": "map_full"},
        {"ts_ns": RD.T0 + RD.BUCKET, "probe": "faults", "events": 10, "lost": 5, "reason": "map_full"},
    ])
    w.close()
    text = " ".join(parse(render_html(Recording(tmp_path / "lost"))).text)
    assert "Some events were lost" in text
    row = text[text.index("events lost"):]
    assert "faults" in row and "map_full" in row and "100" in row and "12" in row
    assert "sched" not in row.split("Not checked")[0]  # no losses: not listed


def test_report_and_terminal_print_the_same_worst_incident(full):
    """The worst incident's line is the diagnosis's (``worst``): the HTML report shows it as the
    terminal does, escaped, and only when there is more than one incident to choose from."""
    from autoglm_trace.analysis.render import render_diagnosis

    def inc(i: int, impact: float) -> dict:
        return {"id": i, "start": "2025-11-24T17:23:50.000Z", "end": "", "start_ns": RD.T0 + RD.SPIKE[0],
                "end_ns": RD.T0 + RD.SPIKE[1], "offset_s": 1.0, "duration_s": 1.0, "headline": "h",
                "latency_ms": 604.5, "baseline_ms": 85.0, "impact": impact, "impact_unit": "ms", "requests": 3,
                "causes": [{"kind": "cpu_contention", "score": 0.9, "summary": "s", "evidence": {}, "culprits": []}]}

    line = "Worst: incident 2 at 17:23:50.000 (<b>x</b>)"
    diag = {"target": {}, "recording": "r", "window": {"start": "", "end": "", "duration_s": 1.0},
            "incidents": [inc(1, 1.0), inc(2, 9.0)], "worst_first": [2, 1], "worst": {"id": 2, "summary": line},
            "oom": [], "findings": [], "not_checked": []}
    html = render_html(full, diagnosis=diag, oom={"kills": []})
    assert line in "".join(parse(html).text) and "<b>x</b>" not in html
    assert line in render_diagnosis(diag)
    one = dict(diag, incidents=[inc(2, 9.0)], worst_first=[2])
    assert "Worst:" not in "".join(parse(render_html(full, diagnosis=one, oom={"kills": []})).text)
