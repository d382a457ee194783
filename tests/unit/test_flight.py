"""Flight recorder logic (tracer/flight/) without root: parsing, triggers, snapshots, retention.

The trigger loop is driven with a real RingSink and a real (not started) Recorder whose manifest is
built as ``Recorder.run`` builds it; snapshots are read back with the ordinary ``Recording`` reader.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from autoglm_trace import clock
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.collector import SessionContext
from autoglm_trace.errors import UsageError, WriteError
from autoglm_trace.sinks import rows_to_batch
from autoglm_trace.target import TargetTree
from autoglm_trace.tracer.fanout import FanOut
from autoglm_trace.tracer.flight import (
    FlightOptions,
    FlightRecorder,
    MetricState,
    apply_retention,
    list_snapshots,
    parse_duration,
    parse_expr,
    parse_size,
    slow_spans,
)
from autoglm_trace.tracer.manifest import new_manifest
from autoglm_trace.tracer.session import Recorder, RecordOptions

S = 1_000_000_000


def test_parse_duration_and_size():
    assert parse_duration("5m") == 300 and parse_duration("30s") == 30 and parse_duration("1.5h") == 5400
    assert parse_duration("500ms") == 0.5 and parse_duration("90") == 90
    assert parse_size("256M") == 256 << 20 and parse_size("1G") == 1 << 30 and parse_size("500MB") == 500_000_000
    assert parse_size("4096") == 4096 and parse_size("2GiB") == 2 << 30
    for bad in ("", "5 parsecs", "m5", "-3s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_size("12 bananas")


def test_parse_expr_is_a_comparison_and_nothing_else():
    t = parse_expr("gpu_mem_used_frac>0.97")
    assert (t.metric, t.op, t.value) == ("gpu_mem_used_frac", ">", 0.97)
    assert t.holds(0.98) and not t.holds(0.97) and not t.holds(None)
    assert parse_expr("host_mem_available_frac < 5%").value == pytest.approx(0.05)
    assert parse_expr("rss_bytes >= 20G").value == 20 << 30
    assert parse_expr("runq_wait_ms_p99>=0.05s").value == pytest.approx(50)
    assert parse_expr("psi_mem_some_pct > 10%").value == 10
    for bad in ("__import__('os').system('id')>1", "gpu_mem_used_frac > 0.9 or 1", "nope>1",
                "rss_bytes > 5ms", "load1 >> 3", "load1"):
        with pytest.raises(ValueError):
            parse_expr(bad)


def test_metric_state_from_rows():
    ms = MetricState()
    ring_rows = {
        "gpu_devices": rows_to_batch("gpu_devices", [
            {"ts_ns": 1, "gpu": 0, "mem_used_bytes": 90, "mem_total_bytes": 100, "util_gpu_pct": 50.0},
            {"ts_ns": 1, "gpu": 1, "mem_used_bytes": 10, "mem_total_bytes": 100, "util_gpu_pct": 99.0}]),
        "host_samples": rows_to_batch("host_samples", [
            {"ts_ns": 0, "mem_total_bytes": 1000, "mem_available_bytes": 500, "psi_mem_some_us": 0},
            {"ts_ns": S, "mem_total_bytes": 1000, "mem_available_bytes": 40, "psi_mem_some_us": 250_000,
             "swap_total_bytes": 0, "load1": 3.5}]),
        "proc_samples": rows_to_batch("proc_samples", [
            {"ts_ns": 5, "pid": 1, "rss_bytes": 10}, {"ts_ns": 6, "pid": 1, "rss_bytes": 30},
            {"ts_ns": 6, "pid": 2, "rss_bytes": 12}]),
        "sched": rows_to_batch("sched", [
            {"ts_ns": S, "bucket_ns": S, "pid": 1, "tid": 1, "runq_max_ns": 3_000_000,
             "runq_hist": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 98, 0, 2]},  # 98 waits < 1.024 ms, 2 < 4.096 ms
            {"ts_ns": S, "bucket_ns": S, "pid": 2, "tid": 2, "runq_max_ns": 5_000_000, "runq_hist": None}]),
    }
    import pyarrow as pa

    ms.update({k: pa.Table.from_batches([v]) for k, v in ring_rows.items()})
    assert ms.value("gpu_mem_used_frac") == pytest.approx(0.9)
    assert ms.value("gpu_util_pct") == 99.0
    assert ms.value("host_mem_available_frac") == pytest.approx(0.04)
    assert ms.value("host_mem_available_bytes") == 40
    assert ms.value("psi_mem_some_pct") == pytest.approx(25.0)
    assert ms.value("swap_used_frac") == 0.0 and ms.value("load1") == 3.5
    assert ms.value("rss_bytes") == 42 and ms.value("max_rss_bytes") == 30
    assert ms.value("runq_wait_ms_max") == 5.0
    # One p99 for every view (autoglm_trace/signals.py log2_quantile, Prometheus' histogram_quantile): rank
    # 99 of 100 is the first of the 2 waits in [2.048, 4.096) ms, interpolated to the bucket's middle.
    assert ms.value("runq_wait_ms_p99") == pytest.approx(3.072)
    assert ms.value("gpu_temp_c") is None


def _spans(lat_ms: list[float], base: int = 0, name: str = "req") -> list[dict]:
    out, t = [], base
    for ms in lat_ms:
        out.append({"ts_ns": t, "end_ns": t + int(ms * 1e6), "name": name, "source": "api", "ok": True})
        t += int(ms * 1e6) + 10_000_000
    return out


def test_slow_spans_flags_the_outlier_only():
    import pyarrow as pa

    rows = _spans([100 + (i % 7) for i in range(60)] + [2000] + [100 + (i % 5) for i in range(10)])
    t = pa.Table.from_batches([rows_to_batch("spans", rows)])
    slow = slow_spans(t)
    assert slow.tolist().count(True) == 1 and bool(slow[60])


# Driving the trigger loop -----------------------------------------------------------------------
def _recorder(tmp_path: Path, mode: str = "host", root: int | None = None) -> Recorder:
    rec = Recorder(RecordOptions(output=tmp_path / "unused", host=mode == "host"), write_files=False)
    rec.manifest = new_manifest({"mode": mode, "pid": root}, {"interval_ms": 100}, 100_000_000)
    rec.manifest["collectors"] = {"proc": {"status": "ok"}, "gpu": {"status": "unavailable", "reason": "no GPU"}}
    target = TargetTree(mode="host") if mode == "host" else TargetTree(mode="tree", root_pid=root)
    if root is not None:
        target.add(root)
    rec.ctx = SessionContext(emit_rows=lambda *_: None, emit_columns_fn=lambda *_: None,
                             emit_batch_fn=lambda *_: None, target=target)
    return rec


def _flight(tmp_path: Path, **kw) -> FlightRecorder:
    kw.setdefault("tail_s", 0.2)
    kw.setdefault("cooldown_s", 60)
    fo = FlightOptions(out_dir=tmp_path / "out", ring_s=60, **kw)
    fo.out_dir.mkdir(exist_ok=True)
    return FlightRecorder(fo)


def _emit_host(fan: FanOut, t0: int, n: int) -> None:
    for i in range(n):
        fan.emit("host_samples", [{"ts_ns": t0 + i * S // 10, "mem_total_bytes": 100, "mem_available_bytes": 50}])


def test_oom_trigger_writes_the_ring_plus_the_tail_exactly_once(tmp_path: Path):
    fl = _flight(tmp_path)
    rec = _recorder(tmp_path)
    fan = FanOut(None, [fl.ring])
    now = clock.now_ns()
    _emit_host(fan, now - 5 * S, 40)  # 40 rows before the trigger
    fl.tick(rec)
    assert fl.pending is None
    fan.emit("oom_kills", [{"ts_ns": now, "pid": 4242, "comm": "python3", "memcg": "/x", "anon_rss_bytes": 99 << 20,
                            "memcg_limit_bytes": 100 << 20}])
    fl.tick(rec)
    assert fl.pending is not None and fl.pending.kind == "oom" and "4242" in fl.pending.detail
    # Rows arriving during the tail, including a late one stamped before the trigger.
    _emit_host(fan, now + S, 5)
    fan.emit("host_samples", [{"ts_ns": now - 10 * S, "mem_total_bytes": 100, "mem_available_bytes": 1}])
    # Another trigger during the tail joins the same snapshot.
    fan.emit("oom_kills", [{"ts_ns": now + S, "pid": 4343, "comm": "python3"}])
    fl.tick(rec)
    time.sleep(0.25)
    fl.tick(rec)
    assert fl.pending is None
    fl.finish(rec, rec.manifest)
    snaps = list_snapshots(fl.fo.out_dir)
    assert len(snaps) == 1 and snaps[0].name.endswith("-oom") and fl.saved == snaps
    r = Recording(snaps[0])
    assert r.complete
    hs = r.table("host_samples")
    assert hs.num_rows == 40 + 5 + 1  # every row once: the captured ring plus what came after
    assert sorted(r.table("oom_kills").column("pid").to_pylist()) == [4242, 4343]
    m = r.manifest
    assert m["trigger"]["kind"] == "oom" and [a["kind"] for a in m["trigger"]["also"]] == ["oom"]
    assert m["start_ns"] == now - 10 * S and r.end_ns == now + S + 4 * S // 10
    assert m["tables"]["host_samples"] == 46 and m["flight"]["ring_s"] == 60
    assert m["collectors"]["gpu"]["reason"] == "no GPU"  # the recorder's manifest, copied
    assert m["target"]["mode"] == "host"


def test_cooldown_suppresses_but_sigusr1_always_snapshots(tmp_path: Path):
    fl = _flight(tmp_path, tail_s=0.0, cooldown_s=3600)
    rec = _recorder(tmp_path)
    fan = FanOut(None, [fl.ring])
    now = clock.now_ns()
    _emit_host(fan, now - S, 5)
    fan.emit("oom_kills", [{"ts_ns": now, "pid": 1}])
    fl.tick(rec)  # fires and (tail 0) finishes in the same tick
    assert fl.pending is None
    fan.emit("oom_kills", [{"ts_ns": now + 1, "pid": 2}])
    fl.tick(rec)
    assert fl.suppressed == 1 and fl.pending is None
    fl.signal_requested.set()
    fl.tick(rec)
    fl.finish(rec, rec.manifest)
    kinds = sorted(p.name.rsplit("-", 1)[-1] for p in list_snapshots(fl.fo.out_dir))
    assert kinds == ["oom", "signal"]


def test_threshold_fires_on_the_crossing_not_while_it_holds(tmp_path: Path):
    fl = _flight(tmp_path, tail_s=0.0, cooldown_s=0, triggers=("threshold",),
                 thresholds=[parse_expr("host_mem_available_frac<0.1")])
    rec = _recorder(tmp_path)
    fan = FanOut(None, [fl.ring])
    now = clock.now_ns()

    def host(avail: int, i: int) -> None:
        fan.emit("host_samples", [{"ts_ns": now + i, "mem_total_bytes": 100, "mem_available_bytes": avail}])
        fl._next_threshold_ns = 0  # evaluate on every tick here (the loop checks once a second)
        fl.tick(rec)

    host(50, 0)
    host(5, 1)   # crosses: fires
    host(4, 2)   # still below: no new snapshot
    host(60, 3)  # recovers
    host(3, 4)   # crosses again: fires
    fl.finish(rec, rec.manifest)
    snaps = list_snapshots(fl.fo.out_dir)
    assert len(snaps) == 2 and all("-threshold" in p.name for p in snaps)
    assert "host_mem_available_frac<0.1" in Recording(snaps[0]).manifest["trigger"]["detail"]


def test_spike_trigger_from_spans(tmp_path: Path):
    fl = _flight(tmp_path, tail_s=0.0, triggers=("spike",))
    rec = _recorder(tmp_path)
    fan = FanOut(None, [fl.ring])
    base = clock.now_ns() - 30 * S
    fan.emit("spans", _spans([100 + (i % 7) for i in range(60)], base))
    fl.tick(rec)
    assert not list_snapshots(fl.fo.out_dir) and fl.pending is None
    fl._next_spike_ns = 0
    fan.emit("spans", _spans([2500], base + 20 * S))
    fl.tick(rec)
    fl.finish(rec, rec.manifest)
    snaps = list_snapshots(fl.fo.out_dir)
    assert len(snaps) == 1 and snaps[0].name.endswith("-spike")
    assert "2500 ms" in Recording(snaps[0]).manifest["trigger"]["detail"]


def test_exit_trigger_for_crashes_and_the_roots_bad_exit(tmp_path: Path):
    fl = _flight(tmp_path, tail_s=0.0, cooldown_s=0, triggers=("exit",))
    rec = _recorder(tmp_path, mode="tree", root=100)
    fan = FanOut(None, [fl.ring])
    now = clock.now_ns()
    fan.emit("proc_events", [
        {"ts_ns": now, "event": "exit", "pid": 101, "exit_code": 1, "source": "bpf"},   # a helper's exit 1: normal
        {"ts_ns": now, "event": "exit", "pid": 102, "signal": int(signal.SIGTERM), "source": "bpf"},  # asked to stop
        {"ts_ns": now, "event": "fork", "pid": 103, "source": "bpf"},
    ])
    fl.tick(rec)
    assert not list_snapshots(fl.fo.out_dir)
    fan.emit("proc_events", [{"ts_ns": now + 1, "event": "exit", "pid": 104, "comm": "worker",
                              "signal": int(signal.SIGSEGV), "source": "bpf"}])
    fl.tick(rec)
    fan.emit("proc_events", [{"ts_ns": now + 2, "event": "exit", "pid": 100, "exit_code": 3, "source": "bpf"}])
    fl.tick(rec)
    fl.finish(rec, rec.manifest)
    snaps = list_snapshots(fl.fo.out_dir)
    details = [Recording(p).manifest["trigger"]["detail"] for p in snaps]
    assert len(snaps) == 2, details
    assert any("pid 104" in d and "SIGSEGV" in d for d in details)
    assert any("pid 100" in d and "exit code 3" in d for d in details)


def _fake_snapshot(d: Path, name: str, size: int) -> Path:
    p = d / name
    p.mkdir()
    (p / "manifest.json").write_text(json.dumps({"format": "autoglm-trace-recording"}))
    (p / "sched.arrow").write_bytes(b"\0" * size)
    return p


def test_retention_deletes_the_oldest_by_count_and_bytes(tmp_path: Path):
    d = tmp_path
    a = _fake_snapshot(d, "20260101T000000Z-oom", 1000)
    b = _fake_snapshot(d, "20260101T000100Z-signal", 1000)
    c = _fake_snapshot(d, "20260102T000000Z-spike-2", 1000)
    other = d / "20260101T000000Z-notes"  # looks like one, but has no manifest: never touched
    other.mkdir()
    (d / "keep-me").mkdir()
    assert list_snapshots(d) == [a, b, c]
    assert apply_retention(d, None, None) == []
    assert apply_retention(d, 2, None) == [a]
    assert list_snapshots(d) == [b, c]
    # By bytes: the newest (protected, just written) stays even if alone it is over the limit.
    assert apply_retention(d, None, 500, protect=c) == [b]
    assert list_snapshots(d) == [c] and other.is_dir() and (d / "keep-me").is_dir()


def test_record_cli_ring_options(tmp_path: Path):
    from autoglm_trace.tracer.commands.record import flight_options, parse_options

    args, opts = parse_options(["--ring", "5m", "-o", str(tmp_path / "f"), "--trigger", "oom,signal",
                                "--trigger-expr", "gpu_mem_used_frac>0.97", "--keep", "3", "--keep-bytes", "1G"])
    assert opts.host  # no target with --ring: the whole host
    fo = flight_options(args, opts)
    assert fo.ring_s == 300 and fo.triggers == ("oom", "signal", "threshold") and fo.keep == 3
    assert fo.keep_bytes == 1 << 30 and fo.ring_bytes == 24 << 20 and fo.tail_s == 10
    with pytest.raises(UsageError):
        parse_options(["--keep", "3", "--host"])  # flight options without --ring
    with pytest.raises(UsageError):
        parse_options(["-o", "x"])  # no target without --ring
    for bad in (["--ring", "soon"], ["--ring", "5m", "--trigger", "oom,boom"], ["--ring", "5m", "--trigger", "threshold"],
                ["--ring", "5m", "--ring-bytes", "1k"], ["--ring", "5m", "--trigger-expr", "x>1"]):
        with pytest.raises(UsageError):  # refused while parsing, before anything starts
            parse_options(bad)


def test_out_dir_writable_by_others_is_refused(tmp_path: Path) -> None:
    """Snapshots are written, renamed and deleted by name: a directory others can write is refused."""
    from autoglm_trace.tracer.flight.snapshots import prepare_out_dir

    for mode in (0o777, 0o1777, 0o775):
        d = tmp_path / f"out-{mode:o}"
        d.mkdir()
        os.chmod(d, mode)
        with pytest.raises(WriteError, match="can be written by other users"):
            prepare_out_dir(d)
    ok = tmp_path / "ok"
    prepare_out_dir(ok)  # created fresh: ours, not writable by others
    assert ok.is_dir()
