"""Every request-timing source against real processes and real sockets: span API (receiver + a child
process), Prometheus scrape of a loopback server, latency logs, synthetic HTTP probe."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest

from autoglm_trace import schema, span_client
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.serving_metrics import (
    bucket_quantile,
    find_metric,
    gauge_series,
    histogram_windows,
)
from autoglm_trace.collector import SessionContext
from autoglm_trace.probes.http_probe import HttpProbe
from autoglm_trace.probes.latency_log import LatencyLogTail, latency_spans, parse_latency_file, to_spans
from autoglm_trace.probes.scrape import Scraper
from autoglm_trace.probes.span_receiver import SpanReceiver
from autoglm_trace.target import TargetTree
from autoglm_trace.tracer.writer import RecordingWriter
from tests.foreign_user import SYSTEM_PYTHON, package_copy, world_dir

MS = 1_000_000


class ListSink:
    def __init__(self) -> None:
        self.rows: dict[str, list[dict]] = {}
        self.lock = threading.Lock()

    def emit(self, table, rows):
        schema.schema_for(table)  # only tables the schema knows
        pa.Table.from_pylist(list(rows), schema=schema.schema_for(table))  # and only its columns/types
        with self.lock:
            self.rows.setdefault(table, []).extend(rows)

    def emit_columns(self, table, cols):
        n = len(next(iter(cols.values())))
        self.emit(table, [{k: v[i] for k, v in cols.items()} for i in range(n)])

    def ctx(self, **options) -> SessionContext:
        return SessionContext(emit_rows=self.emit, emit_columns_fn=self.emit_columns,
                              emit_batch_fn=lambda t, b: self.emit(t, b.to_pylist()),
                              target=TargetTree.for_host(), options=options)


def recording_ctx(tmp_path: Path, **options) -> tuple[SessionContext, RecordingWriter]:
    manifest = {"format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION,
                "clock": {"monotonic_to_wall_ns": 0}}
    w = RecordingWriter(tmp_path / "rec", manifest)
    ctx = SessionContext(emit_rows=w.emit, emit_columns_fn=w.emit_columns, emit_batch_fn=w.emit_batch,
                         target=TargetTree.for_host(), options=options)
    return ctx, w


# --------------------------------------------------------------------------------------------
# Span API
# --------------------------------------------------------------------------------------------
CHILD = r"""
import json, time, sys
from autoglm_trace import span, mark_first_token
out = []
for i in range(20):
    t0 = time.monotonic_ns()
    with span("generate", prompt_tokens=i, model="demo") as s:
        time.sleep(0.002)
        mark_first_token()
        t_first = time.monotonic_ns()
        time.sleep(0.003)
        s.set(output_tokens=2 * i)
        t_last = time.monotonic_ns()
    t1 = time.monotonic_ns()
    out.append([t0, t_first, t_last, t1])
try:
    with span("fails"):
        raise RuntimeError("x")
except RuntimeError:
    pass
from autoglm_trace import span_client
span_client.flush()
print(json.dumps({"pid": __import__("os").getpid(), "spans": out, "stats": span_client.stats()}))
"""


def run_child(env_path: str, user: int | None = None) -> dict:
    env = dict(os.environ, **{span_client.ENV_VAR: env_path})
    kw = {}
    if user is not None:
        kw = {"user": user, "group": user}
    p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=30, **kw)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_spans_from_a_child_land_in_the_recording_on_its_clock(tmp_path):
    ctx, w = recording_ctx(tmp_path)
    rx = SpanReceiver()
    rx.start(ctx)
    try:
        env = rx.target_env()
        path = env[span_client.ENV_VAR]
        st = os.stat(os.path.dirname(path))
        assert st.st_mode & 0o777 == 0o700  # private directory
        child = run_child(path)
        rx.sample(time.monotonic_ns())
    finally:
        rx.stop()
    assert not os.path.exists(path)
    w.close()
    rec = Recording(tmp_path / "rec")
    spans = rec.table("spans").to_pylist()
    assert child["stats"] == {"sent": 21, "dropped": 0}
    gen = [s for s in spans if s["name"] == "generate"]
    assert len(gen) == 20
    within_1ms = 0
    for s, (t0, t_first, t_last, t1) in zip(gen, child["spans"], strict=True):
        # recorded start/end are the child's own clock: bracketed by its readings around them ...
        assert t0 <= s["ts_ns"] <= t_first
        assert t_last <= s["end_ns"] <= t1
        assert s["ts_ns"] + s["ttft_ns"] <= t_first
        # ... and within 1 ms of them (a loaded 2-core box may preempt the odd one in between)
        within_1ms += s["ts_ns"] - t0 <= MS and t1 - s["end_ns"] <= MS and t_first - s["ts_ns"] - s["ttft_ns"] <= MS
        assert s["ttft_ns"] >= 2 * MS
        assert s["pid"] == child["pid"] and s["source"] == "api" and s["ok"]
        assert json.loads(s["attrs"]) == {"model": "demo"}
    assert within_1ms >= 18, within_1ms
    assert [s["prompt_tokens"] for s in gen] == list(range(20))
    assert [s["output_tokens"] for s in gen] == [2 * i for i in range(20)]
    failed = [s for s in spans if s["name"] == "fails"]
    assert len(failed) == 1 and failed[0]["ok"] is False
    stats = rec.table("probe_stats").to_pylist()
    assert sum(r["events"] for r in stats if r["probe"] == "spans") == 21


@pytest.mark.root
def test_socket_is_given_to_the_target_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to run the child as another user")
    sink = ListSink()
    rx = SpanReceiver({"target_uid": 65534, "target_gid": 65534})
    rx.start(sink.ctx())
    try:
        path = rx.target_env()[span_client.ENV_VAR]
        assert os.stat(path).st_uid == 65534 and os.stat(os.path.dirname(path)).st_uid == 65534
        # the repository (and its venv) may sit under a directory nobody cannot enter: run the client
        # from a world-readable copy of the sources with the system interpreter
        with world_dir() as d:
            script = f"import sys; sys.path.insert(0, {str(package_copy(d))!r})\n" + CHILD
            env = {"PATH": "/usr/bin:/bin", span_client.ENV_VAR: path}
            p = subprocess.run([SYSTEM_PYTHON, "-I", "-c", script], env=env, capture_output=True, text=True,
                               timeout=30, user=65534, group=65534, cwd="/")
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert out["stats"]["dropped"] == 0
        rx.sample(time.monotonic_ns())
    finally:
        rx.stop()
    assert len(sink.rows["spans"]) == 21


def test_receiver_counts_client_drops_and_malformed(tmp_path):
    sink = ListSink()
    rx = SpanReceiver()
    rx.start(sink.ctx())
    try:
        path = rx.target_env()[span_client.ENV_VAR]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(b"garbage", path)
        t0 = time.monotonic_ns()
        s.sendto(span_client.encode("a", t0 + 1, t0 + 2, pid=777, tid=777, dropped=5), path)
        s.sendto(span_client.encode("b", t0 + 3, t0 + 4, pid=777, tid=777, dropped=7), path)
        s.close()
        deadline = time.time() + 5
        while time.time() < deadline and len(sink.rows.get("spans", [])) < 2:
            time.sleep(0.05)
            rx.sample(time.monotonic_ns())
    finally:
        rx.stop()
    assert [r["name"] for r in sink.rows["spans"]] == ["a", "b"]
    stats = sink.rows["probe_stats"]
    assert sum(r["lost"] for r in stats if r["reason"] == "client_send_failed") == 7
    assert sum(r["lost"] for r in stats if r["reason"] == "malformed") == 1


# --------------------------------------------------------------------------------------------
# Prometheus scrape
# --------------------------------------------------------------------------------------------
BOUNDS = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class MetricsState:
    """A vLLM-looking /metrics body built from known observations (the ground truth)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge, Histogram

        self.reg = CollectorRegistry()
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "E2E latency", ["model_name"],
                             buckets=BOUNDS, registry=self.reg)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "TTFT", ["model_name"],
                              buckets=BOUNDS, registry=self.reg)
        self.running = Gauge("vllm:num_requests_running", "running", ["model_name"], registry=self.reg)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "kv", ["model_name"], registry=self.reg)
        for m in (self.e2e, self.ttft, self.running, self.kv):
            m.labels("m")  # engines create their label sets at start-up

    def body(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.reg)


def serve(handler_factory) -> tuple[ThreadingHTTPServer, str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler_factory)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


@pytest.fixture
def metrics_server():
    state = MetricsState()
    stop = threading.Event()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path == "/garbage":
                body = b"\x00\x01 this is { not prometheus\nfoo bar baz qux\n"
            elif self.path == "/hang":
                stop.wait(30)
                return
            elif self.path == "/trickle":
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(1000):
                    if stop.is_set():
                        return
                    try:
                        self.wfile.write(b"# x\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.05)
                return
            elif self.path == "/500":
                self.send_error(500)
                return
            else:
                body = state.body()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv, base = serve(H)
    yield state, base
    stop.set()
    srv.shutdown()
    srv.server_close()


def true_quantile_bucket(values: list[float], q: float) -> tuple[float, float]:
    """The bucket (lower, upper] holding the true q-quantile: any estimate must fall inside it."""
    v = sorted(values)
    x = v[max(0, math.ceil(q * len(v)) - 1)]
    upper = next(b for b in BOUNDS if x <= b)
    lower = max([0.0] + [b for b in BOUNDS if b < upper])
    return lower, upper


def test_scrape_vllm_metrics_and_windowed_quantiles(metrics_server):
    state, base = metrics_server
    sink = ListSink()
    sc = Scraper(base + "/metrics", interval_s=1.0, timeout_s=2.0)
    sc.ctx = sink.ctx()
    import random

    rnd = random.Random(7)
    windows_truth = []
    assert sc.scrape_once() > 0  # baseline: empty histograms
    t_base = sink.rows["scrape_samples"][-1]["ts_ns"]
    for w in range(3):
        # window w: fast requests, then a slow window
        vals = [rnd.uniform(0.05, 0.4) if w != 1 else rnd.uniform(1.5, 8.0) for _ in range(200)]
        for v in vals:
            state.e2e.labels("m").observe(v)
            state.ttft.labels("m").observe(v / 10)
        state.running.labels("m").set(w + 1)
        state.kv.labels("m").set(0.1 * (w + 1))
        windows_truth.append(vals)
        time.sleep(0.12)  # window length 100 ms + slack: one scrape per window
        assert sc.scrape_once() > 0, sc.last_error
    rows = sink.rows["scrape_samples"]
    table = pa.Table.from_pylist(rows, schema=schema.schema_for("scrape_samples"))
    assert {r["url"] for r in rows} == {base + "/metrics"}
    bucket_rows = [r for r in rows if r["metric"] == "vllm:e2e_request_latency_seconds_bucket"]
    assert bucket_rows and all("le" in json.loads(r["labels"]) for r in bucket_rows)
    assert json.loads(bucket_rows[0]["labels"])["model_name"] == "m"
    assert find_metric(table, ["vllm:inter_token_latency_seconds", "vllm:e2e_request_latency_seconds"]) == \
        "vllm:e2e_request_latency_seconds"
    ts = sorted({r["ts_ns"] for r in rows})
    assert ts[0] == t_base and len(ts) == 4
    # windows aligned on the scrapes: [ts0, ts0+w) ... choose w so each window holds one scrape
    win = min(b - a for a, b in zip(ts, ts[1:], strict=False))
    out = histogram_windows(table, "vllm:e2e_request_latency_seconds", ts[1] - ts[0])
    got = out.to_pylist()
    assert got[0]["count"] == 200
    assert abs(got[0]["sum"] - sum(windows_truth[0])) < 1e-6
    for q, col in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
        lo, hi = true_quantile_bucket(windows_truth[0], q)
        assert lo <= got[0][col] <= hi, (col, got[0][col], lo, hi)
    # the slow window stands out in p99 and the total count is conserved
    full = histogram_windows(table, "vllm:e2e_request_latency_seconds", 10**12)
    assert full.column("count").to_pylist() == [600]
    assert win > 0
    # Scrape gaps jitter on a loaded box, so the slow scrape may share its window with a fast one:
    # the slow requests then still own the window's tail (p99); a window holding only them has its p50
    # in the right bucket.
    slow = [g for g in got if g["p99"] is not None and g["p99"] > 1.0]
    assert slow, got
    lo, hi = true_quantile_bucket(windows_truth[1], 0.5)
    pure = [g for g in slow if g["count"] == 200]
    assert all(lo <= g["p50"] <= hi for g in pure), pure
    running = gauge_series(table, "vllm:num_requests_running").column("value").to_pylist()
    assert running == [0.0, 1.0, 2.0, 3.0]
    stats = sink.rows["probe_stats"]
    assert len(stats) == 4 and all(r["lost"] == 0 for r in stats)


def test_bucket_quantile_matches_prometheus_interpolation():
    bounds = [1.0, 2.0, 4.0, math.inf]
    # 10 in (0,1], 10 in (1,2], 0 in (2,4], 0 above: p50 = 1.0, p75 = 1.5
    assert bucket_quantile(0.5, bounds, [10, 20, 20, 20]) == pytest.approx(1.0)
    assert bucket_quantile(0.75, bounds, [10, 20, 20, 20]) == pytest.approx(1.5)
    assert bucket_quantile(0.99, bounds, [0, 0, 0, 5]) == 4.0  # in +Inf: the last finite bound
    assert bucket_quantile(0.5, bounds, [0, 0, 0, 0]) is None


@pytest.mark.parametrize("path,kind", [("/garbage", "parse"), ("/hang", "timeout"), ("/trickle", "timeout"),
                                       ("/500", "http_error")])
def test_scrape_failures_are_bounded_and_counted(metrics_server, path, kind):
    _state, base = metrics_server
    sink = ListSink()
    ctx = sink.ctx()
    sc = Scraper(base + path, interval_s=0.5, timeout_s=0.5)
    sc.ctx = ctx
    t0 = time.monotonic()
    assert sc.scrape_once() == 0
    took = time.monotonic() - t0
    assert took < 0.5 + 1.0  # bounded by the timeout (plus scheduling slack), not by the server
    assert sc.errors == {kind: 1}
    assert sink.rows["probe_stats"][0]["lost"] == 1 and sink.rows["probe_stats"][0]["reason"] == kind
    assert any(kind in n for n in ctx.notes)
    assert "scrape_samples" not in sink.rows


def test_scraper_thread_and_unreachable_endpoint():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    sink = ListSink()
    sc = Scraper(f"http://127.0.0.1:{port}/metrics", interval_s=0.1, timeout_s=0.1)
    ctx = sink.ctx()
    sc.start(ctx)
    time.sleep(0.55)
    # refusals before the first answer: the server is starting, not a lost sample ...
    assert sc.waiting >= 3 and not sc.errors and "probe_stats" not in sink.rows
    sc.stop()
    # ... unless it never answers: then one counted error and a note
    assert sc.errors == {"connect": 1}
    assert sink.rows["probe_stats"][0]["reason"] == "connect"
    assert any("never answered" in n for n in ctx.notes)


# --------------------------------------------------------------------------------------------
# Latency logs
# --------------------------------------------------------------------------------------------
def test_latency_log_jsonl_with_malformed_lines(tmp_path):
    f = tmp_path / "lat.jsonl"
    f.write_text("\n".join([
        '{"start": 1732500000.0, "end": 1732500000.25, "name": "chat", "prompt_tokens": 12}',
        '{"time": 1732500001.0, "latency": 0.5, "status": 503, "route": "/v1"}',
        "this is not json",
        '{"start": 1732500002.0}',
        '{"start": 1732500003.0, "end": 1732500002.0}',
        '{"time": 1732500004000, "latency": 0.1}',
        "[1, 2]",
        '{"start": "x", "end": 1732500005.0}',
        "",
        '{"start": 1732500006.0, "latency_ms": 40, "ttft_ms": 12, "ok": false}',
    ]) + "\n")
    rows, errors = parse_latency_file(f)
    assert len(rows) == 3
    assert rows[0]["start_wall_ns"] == 1732500000_000_000_000 and rows[0]["end_wall_ns"] == 1732500000_250_000_000
    assert rows[0]["name"] == "chat" and rows[0]["prompt_tokens"] == 12 and rows[0]["ok"]
    # time + latency: time is the end
    assert rows[1]["end_wall_ns"] == 1732500001_000_000_000 and rows[1]["start_wall_ns"] == 1732500000_500_000_000
    assert rows[1]["ok"] is False and json.loads(rows[1]["attrs"]) == {"route": "/v1"}
    assert rows[2]["end_wall_ns"] - rows[2]["start_wall_ns"] == 40 * MS and rows[2]["ttft_ns"] == 12 * MS
    assert rows[2]["ok"] is False
    assert [e.split(":")[0] for e in errors] == ["line 3", "line 4", "line 5", "line 6", "line 7", "line 8"]
    assert "not valid JSON" in errors[0]
    assert "start and end" in errors[1]
    assert "before start" in errors[2]
    assert "milliseconds" in errors[3]
    assert "not a JSON object" in errors[4]
    assert "not a number" in errors[5]
    spans = to_spans(rows, wall_offset_ns=1732400000_000_000_000)
    assert spans[0]["ts_ns"] == 100000_000_000_000 and spans[0]["source"] == "log"
    table, errs = latency_spans(f, 1732400000_000_000_000)
    assert table.schema.equals(schema.schema_for("spans"), check_metadata=False)
    assert table.to_pylist() == spans and errs == errors


def test_latency_log_csv(tmp_path):
    f = tmp_path / "lat.csv"
    f.write_text("time,latency,name\n"
                 "1732500000.5,0.5,a\n"
                 "1732500001.5,abc,b\n"
                 "1732500002.5,0.25\n"
                 "1732500003.5,-1,d\n"
                 "1732500004.5,0.125,e\n")
    rows, errors = parse_latency_file(f)
    assert [r["name"] for r in rows] == ["a", "e"]
    assert rows[1]["start_wall_ns"] == 1732500004_375_000_000
    assert [e.split(":")[0] for e in errors] == ["line 3", "line 4", "line 5"]
    assert "3 fields" not in errors[1] and "2 fields" in errors[1]
    assert "negative" in errors[2]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    rows, errors = parse_latency_file(bad)
    assert not rows and errors[0].startswith("line 1: not a CSV header")


def test_latency_log_tail_follows_appends(tmp_path):
    f = tmp_path / "live.jsonl"
    f.write_text('{"start": 1732500000.0, "end": 1732500001.0}\n')  # before recording: skipped
    sink = ListSink()
    tail = LatencyLogTail(f, poll_s=0.05)
    ctx = sink.ctx()
    tail.start(ctx)
    try:
        with open(f, "a") as out:
            now = time.time()
            out.write(json.dumps({"start": now - 0.2, "end": now, "name": "live"}) + "\n")
            out.write("broken\n")
            out.write(json.dumps({"time": now, "latency": 0.1})[:-1])  # partial line: waits
            out.flush()
            time.sleep(0.3)
            assert [r["name"] for r in sink.rows.get("spans", [])] == ["live"]
            out.write("}\n")
        time.sleep(0.3)
    finally:
        tail.stop()
    spans = sink.rows["spans"]
    assert len(spans) == 2
    # wall -> monotonic: the span that ended "now" ends within a few ms of monotonic now-at-write
    mono_now = time.monotonic_ns()
    assert abs(spans[0]["end_ns"] - (mono_now - (time.time() - now) * 1e9)) < 50 * MS
    assert any("line 3" in n for n in ctx.notes)
    assert tail.errors_total == 1


# --------------------------------------------------------------------------------------------
# Synthetic probe
# --------------------------------------------------------------------------------------------
def test_http_probe_latency_and_failures():
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path == "/slow":
                time.sleep(0.05)
            code = 500 if self.path == "/fail" else 200
            body = b"ok"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            data = json.loads(self.rfile.read(n))
            body = json.dumps({"echo": data}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv, base = serve(H)
    try:
        sink = ListSink()
        ctx = sink.ctx()
        slow = HttpProbe(base + "/slow", interval_s=0.1, timeout_s=2)
        slow.start(ctx)
        time.sleep(0.45)
        slow.stop()
        spans = sink.rows["spans"]
        assert 2 <= len(spans) <= 6  # one per 100 ms (a loaded box may start late)
        for s in spans:
            d = s["end_ns"] - s["ts_ns"]
            assert 50 * MS <= d < 5000 * MS and s["ok"] and s["source"] == "probe"
            assert json.loads(s["attrs"])["status"] == 200
        fail = HttpProbe(base + "/fail")
        fail.ctx = ctx
        r = fail.probe_once()
        assert r["ok"] is False and json.loads(r["attrs"])["status"] == 500
        post = HttpProbe(base + "/gen", body={"max_tokens": 1})
        post.ctx = ctx
        r = post.probe_once()
        assert r["ok"] and json.loads(r["attrs"])["bytes"] > 0
    finally:
        srv.shutdown()
        srv.server_close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    dead = HttpProbe(f"http://127.0.0.1:{port}/", timeout_s=1)
    dead.ctx = ListSink().ctx()
    r = dead.probe_once()
    assert r["ok"] is False and "connect" in json.loads(r["attrs"])["error"]
    assert r["end_ns"] >= r["ts_ns"]
