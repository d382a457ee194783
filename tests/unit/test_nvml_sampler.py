"""NvmlSampler against the simulated NVML backend: the real sampler code, written through a real
RecordingWriter and read back with analysis.reader.Recording.

Ground truth is the simulation's served state (``SimulatedNvml.device_state``) and, where it
matters, numbers computed by hand from a small scenario.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time

import pytest

from autoglm_trace import schema
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.collector import CollectorUnavailable, SessionContext
from autoglm_trace.probes import nvml_sim
from autoglm_trace.probes.nvml import NvmlSampler, load_nvml, nvml_check, reason_names
from autoglm_trace.target import TargetTree
from autoglm_trace.tracer.writer import RecordingWriter

GiB = 1 << 30
MiB = 1 << 20
NS = 1_000_000_000
T0 = 1_000 * NS  # the fake monotonic clock's start
STEP = 100_000_000


class FakeClock:
    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


class Session:
    """A recorder in miniature: SessionContext -> RecordingWriter, then read back."""

    def __init__(self, tmp_path, target=None) -> None:
        self.path = tmp_path / "rec"
        self.writer = RecordingWriter(
            self.path, {"format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION}
        )
        self.ctx = SessionContext(
            emit_rows=self.writer.emit,
            emit_columns_fn=self.writer.emit_columns,
            emit_batch_fn=self.writer.emit_batch,
            target=target if target is not None else TargetTree.for_pid(os.getpid()),
        )

    def close(self) -> Recording:
        self.writer.close()
        self.writer.write_manifest()
        return Recording(self.path)


def make(tmp_path, scenario=None, options=None, target=None):
    clock = FakeClock()
    sim = nvml_sim.SimulatedNvml(scenario, clock=clock)
    sess = Session(tmp_path, target)
    # Slow fields (PCIe, ECC) inline on the slow tick: deterministic against the fake clock.
    # test_slow_fields_side_thread covers the default side thread.
    sampler = NvmlSampler({"gpu_slow_thread": False, **(options or {})}, nvml=sim, clock=clock)
    return clock, sim, sess, sampler


def run(sampler, clock, seconds: float, pause_s: float = 0.0, extra=None) -> None:
    """Advance the fake clock in 100 ms steps, sampling each time. ``pause_s`` of real time per
    step lets the event thread (which waits in real time) see events due on the fake clock."""
    for _ in range(int(round(seconds * NS / STEP))):
        clock.t += STEP
        sampler.sample(clock.t)
        if extra is not None:
            extra(clock.t)
        if pause_s:
            time.sleep(pause_s)


def wait_for_events(sampler, sess, n: int, timeout_s: float = 10.0) -> None:
    """Wait (real time) until ``n`` gpu_events rows have been emitted, so the test does not
    depend on how fast a loaded machine schedules the event thread."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sampler._drain_events()  # what sample() does on the sampling thread
        if sess.writer.rows().get("gpu_events", 0) >= n:
            return
        time.sleep(0.005)
    raise AssertionError("the event thread did not deliver the event")


def t_of(ts_ns: int) -> float:
    return (ts_ns - T0) / NS


def rows(rec, table, **eq):
    out = rec.table(table).to_pylist()
    return [r for r in out if all(r[k] == v for k, v in eq.items())]


FAST_COLS = [
    "mem_total_bytes", "mem_used_bytes", "mem_free_bytes", "mem_reserved_bytes", "util_gpu_pct",
    "util_mem_pct", "sm_clock_mhz", "mem_clock_mhz", "power_mw", "power_limit_mw", "energy_mj",
    "temp_c", "clocks_event_reasons",
]
SLOW_COLS = ["pcie_tx_kbps", "pcie_rx_kbps", "ecc_corrected", "ecc_uncorrected"]


# ------------------------------------------------------------------------------------------------
def test_recorded_values_equal_served_values(tmp_path):
    clock, sim, sess, s = make(tmp_path)
    s.start(sess.ctx)
    run(s, clock, 12.0)
    s.stop()
    rec = sess.close()
    dev = rec.table("gpu_devices").to_pylist()
    assert len(dev) == 2 * 120
    slow_rows = 0
    for r in dev:
        want = sim.device_state(r["gpu"], t_of(r["ts_ns"]))
        if r["gpu"] == 1:
            # GPU1 has no v2 memory call: v1 'used' includes reserved, reserved unknown.
            want["mem_used_bytes"] += want["mem_reserved_bytes"]
            want["mem_reserved_bytes"] = None
        for c in FAST_COLS:
            assert r[c] == want[c], (r["gpu"], t_of(r["ts_ns"]), c, r[c], want[c])
        if r["ecc_corrected"] is not None:
            slow_rows += 1
            for c in SLOW_COLS:
                expect = None if (r["gpu"] == 1 and c.startswith("pcie")) else want[c]
                assert r[c] == expect, (r["gpu"], c)
        else:
            assert all(r[c] is None for c in SLOW_COLS)
    # Slow fields (PCIe: 20 ms per call in the driver; ECC) once a second per GPU.
    assert slow_rows == 2 * 12
    # Timestamps are the sampling clock's.
    assert sorted({r["ts_ns"] for r in dev}) == [T0 + k * STEP for k in range(1, 121)]
    info = s.info()
    assert [d["uuid"] for d in info["devices"]] == [d["uuid"] for d in sim.scenario["devices"]]
    assert info["devices"][0]["pci_bus_id"] == "00000000:17:00.0"
    assert info["devices"][0]["memory_total_bytes"] == 80 * GiB
    assert info["driver_version"] == "550.54.15"
    assert info["backend"] == "simulated"


def test_memory_matches_hand_computed_kv_growth(tmp_path):
    # One device: 40 GiB, 1 GiB reserved, 10 GiB weights, KV +1 GiB/s from t = 0, unbounded.
    scen = {"devices": [{"memory_total": 40 * GiB, "memory_reserved": GiB, "weights_bytes": 10 * GiB,
                         "kv_growth_bytes_per_s": GiB, "kv_start_s": 0.0, "kv_cap_bytes": None}]}
    clock, sim, sess, s = make(tmp_path, scen)
    s.start(sess.ctx)
    run(s, clock, 40.0)
    s.stop()
    rec = sess.close()
    by_t = {round(t_of(r["ts_ns"]), 1): r for r in rows(rec, "gpu_devices", gpu=0)}
    assert by_t[5.0]["mem_used_bytes"] == 15 * GiB
    assert by_t[5.0]["mem_free_bytes"] == 40 * GiB - GiB - 15 * GiB
    assert by_t[5.0]["mem_reserved_bytes"] == GiB
    # Full at 29 s (10 + 29 = 39 GiB usable); stays full.
    assert by_t[29.0]["mem_free_bytes"] == 0
    assert by_t[40.0]["mem_used_bytes"] == 39 * GiB
    # The model process holds weights + KV.
    procs = {round(t_of(r["ts_ns"]), 1): r for r in rows(rec, "gpu_processes", gpu=0)}
    assert procs[5.0]["used_bytes"] == 15 * GiB


def test_throttle_reasons_recorded_as_flags(tmp_path):
    clock, sim, sess, s = make(tmp_path)
    s.start(sess.ctx)
    run(s, clock, 10.0)
    s.stop()
    rec = sess.close()
    for r in rows(rec, "gpu_devices", gpu=0):
        t = t_of(r["ts_ns"])
        names = reason_names(r["clocks_event_reasons"])
        if 3.0 <= t < 5.0:
            assert names == ["SwPowerCap"], t
            assert r["sm_clock_mhz"] == 1410
            assert r["power_mw"] == r["power_limit_mw"] == 700_000
        elif 8.0 <= t < 9.0:
            assert names == ["SwPowerCap", "HwSlowdown"], t
            assert r["sm_clock_mhz"] == 1410
        else:
            assert names == [], t
            assert r["sm_clock_mhz"] == 1980
    # The idle L4 reports GpuIdle the whole time.
    assert {r["clocks_event_reasons"] for r in rows(rec, "gpu_devices", gpu=1)} == {0x1}
    assert reason_names(0x1 | 0x40 | 0x10000) == ["GpuIdle", "HwThermalSlowdown", "0x10000"]


def test_xid_event_recorded_with_its_time(tmp_path):
    clock, sim, sess, s = make(tmp_path)
    s.start(sess.ctx)
    assert "GPU0" in s.info()["events"]
    run(s, clock, 5.9)
    time.sleep(0.1)
    s._drain_events()
    assert sess.writer.rows().get("gpu_events", 0) == 0  # nothing due yet
    run(s, clock, 0.1)  # sim time 6.0 s: the Xid is due
    wait_for_events(s, sess, 1)
    run(s, clock, 2.0)
    s.stop()
    assert s._event_thread is None  # stop() ended the blocking-wait thread
    rec = sess.close()
    ev = rec.table("gpu_events").to_pylist()
    assert [(e["gpu"], e["event"], e["data"]) for e in ev] == [(0, "xid", 31)]
    # Stamped on the sampler's clock when the wait returned: sim time 6.0 s.
    assert t_of(ev[0]["ts_ns"]) == pytest.approx(6.0)


def test_slow_fields_side_thread(tmp_path):
    """Default mode: PCIe (20 ms per call in the driver) and ECC are read by a side thread and
    each reading lands in exactly one later row; the sampling thread never blocks on them."""
    clock, sim, sess, s = make(tmp_path, options={"gpu_slow_thread": True, "gpu_slow_interval_ms": 100})
    s.start(sess.ctx)
    assert s.info()["slow_fields"] == "side thread"
    t0 = time.monotonic()
    run(s, clock, 3.0, pause_s=0.03)
    assert s._slow_thread is not None and s._slow_thread.is_alive()
    s.stop()
    assert s._slow_thread is None
    elapsed = time.monotonic() - t0
    rec = sess.close()
    g0 = rows(rec, "gpu_devices", gpu=0)
    with_pcie = [r for r in g0 if r["pcie_tx_kbps"] is not None]
    assert len(with_pcie) >= 3
    # Each value was served at some step's clock value at or before the row that carries it
    # (TX and RX are separate 20 ms calls, so they may come from different steps).
    cols = ("pcie_tx_kbps", "pcie_rx_kbps", "ecc_corrected")
    for r in with_pcie:
        steps = [0.0] + [t_of(x["ts_ns"]) for x in g0 if x["ts_ns"] <= r["ts_ns"]]
        for c in cols:
            assert r[c] in {sim.device_state(0, t)[c] for t in steps}, c
    # Readings are not repeated: at most one per slow period of real time.
    assert len(with_pcie) <= elapsed / 0.1 + 2
    # GPU1 has no PCIe counters: its ECC readings still arrive.
    g1 = rows(rec, "gpu_devices", gpu=1)
    assert all(r["pcie_tx_kbps"] is None for r in g1)
    assert any(r["ecc_corrected"] is not None for r in g1)


def test_unsupported_call_noted_once_rest_recorded(tmp_path):
    scen = {"devices": [{"unsupported": ["nvmlDeviceGetPowerUsage"]}, {}]}
    clock, sim, sess, s = make(tmp_path, scen)
    asked = []
    real = sim.nvmlDeviceGetPowerUsage

    def counting(handle):
        asked.append(handle.index)
        return real(handle)

    sim.nvmlDeviceGetPowerUsage = counting
    s.start(sess.ctx)
    run(s, clock, 5.0)
    s.stop()
    rec = sess.close()
    g0 = rows(rec, "gpu_devices", gpu=0)
    g1 = rows(rec, "gpu_devices", gpu=1)
    assert len(g0) == len(g1) == 50
    assert all(r["power_mw"] is None for r in g0)
    assert all(r["power_mw"] is not None for r in g1)  # the other device is unaffected
    for c in FAST_COLS:
        if c != "power_mw":
            assert all(r[c] is not None for r in g0), c  # the other fields are unaffected
    # Asked once on GPU0 (then memoised), every sample on GPU1.
    assert asked.count(0) == 1
    assert asked.count(1) == 50
    power_notes = [n for n in sess.ctx.notes if "nvmlDeviceGetPowerUsage" in n]
    assert len(power_notes) == 1 and power_notes[0].startswith("GPU0")
    assert "power" in s.info()["devices"][0]["unavailable"]


def test_transient_error_loses_only_those_samples(tmp_path):
    scen = {"devices": [{"errors": [{"fn": "nvmlDeviceGetTemperature", "start_s": 2.0, "end_s": 3.0, "code": 999}]}]}
    clock, sim, sess, s = make(tmp_path, scen)
    s.start(sess.ctx)
    run(s, clock, 5.0)
    s.stop()
    rec = sess.close()
    for r in rows(rec, "gpu_devices", gpu=0):
        t = t_of(r["ts_ns"])
        assert (r["temp_c"] is None) == (2.0 <= t < 3.0), t
        assert r["mem_used_bytes"] is not None
    notes = [n for n in sess.ctx.notes if "nvmlDeviceGetTemperature" in n]
    assert len(notes) == 1 and "Unknown Error" in notes[0]


def test_device_disappears_other_continues(tmp_path):
    scen = {"devices": [{"lost_at_s": 4.0}, {}]}
    clock, sim, sess, s = make(tmp_path, scen)
    s.start(sess.ctx)
    run(s, clock, 4.0)
    wait_for_events(s, sess, 2)  # the 'lost' row and the Xid 79
    run(s, clock, 4.0)
    status = s.status()
    s.stop()
    rec = sess.close()
    g0 = [t_of(r["ts_ns"]) for r in rows(rec, "gpu_devices", gpu=0)]
    g1 = [t_of(r["ts_ns"]) for r in rows(rec, "gpu_devices", gpu=1)]
    assert max(g0) == pytest.approx(3.9)
    assert len(g1) == 80 and max(g1) == pytest.approx(8.0)
    assert not [r for r in rows(rec, "gpu_processes", gpu=0) if t_of(r["ts_ns"]) >= 4.0]
    ev = {(e["gpu"], e["event"], e["data"]) for e in rec.table("gpu_events").to_pylist()}
    assert (0, "lost", nvml_sim.NVML_ERROR_GPU_IS_LOST) in ev
    assert (0, "xid", 79) in ev  # the driver's "fallen off the bus"
    assert status == {"gpus": 1, "mem_used_frac_max": pytest.approx(status["mem_used_frac_max"]), "lost": [0]}
    assert any(n.startswith("GPU0 was lost") for n in sess.ctx.notes)
    assert s.info()["devices"][0]["lost"] is True


def test_failures_leave_the_rest_of_the_recording_intact(tmp_path):
    """Another collector's table keeps every row while GPUs fail in every way at once."""
    scen = {"devices": [
        {"lost_at_s": 1.0},
        {"unsupported": ["nvmlDeviceGetUtilizationRates", "nvmlDeviceGetComputeRunningProcesses"],
         "errors": [{"fn": "nvmlDeviceGetClockInfo", "code": 999}]},
    ]}
    clock, sim, sess, s = make(tmp_path, scen)
    s.start(sess.ctx)

    def other(ts):
        sess.ctx.emit("probe_stats", [{"ts_ns": ts, "probe": "other", "events": 1, "lost": 0}])

    run(s, clock, 3.0, extra=other)
    s.stop()
    rec = sess.close()
    assert rec.table("probe_stats").num_rows == 30
    g1 = rows(rec, "gpu_devices", gpu=1)
    assert len(g1) == 30
    assert all(r["util_gpu_pct"] is None and r["sm_clock_mhz"] is None for r in g1)
    assert all(r["mem_total_bytes"] == 80 * GiB for r in g1)
    # A field failing every time is given up after MAX_CONSECUTIVE_FAILURES, with a note.
    assert "sm_clock" in s.info()["devices"][1]["unavailable"]


def test_per_process_rows_mark_the_target(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        target = TargetTree.for_pid(child.pid)
        clock, sim, sess, s = make(tmp_path, target=target)
        s.start(sess.ctx)
        run(s, clock, 2.0)
        s.stop()
        rec = sess.close()
    finally:
        child.kill()
        child.wait()
    g0 = rows(rec, "gpu_processes", gpu=0)
    pids = {r["pid"]: r["in_target"] for r in g0}
    # The sim reports the target's root as the model process (sim_set_target hook), plus a
    # foreign tenant.
    assert pids == {child.pid: True, 424242: False}
    served = dict(sim.device_state(0, 2.0)["processes"])
    last = [r for r in g0 if r["ts_ns"] == T0 + 20 * STEP]
    assert {r["pid"]: r["used_bytes"] for r in last} == served
    # Per-process SM utilisation where the driver gives it; none on GPU1 (unsupported, and no
    # process there).
    # The driver samples per-process utilisation about every 1/6 s; a 100 ms poll finds no new
    # sample about every other time (NOT_FOUND), and the column is then null, not a repeat.
    model = [r for r in g0 if r["pid"] == child.pid]
    with_util = [r for r in model if r["sm_util_pct"] is not None]
    assert len(model) // 3 <= len(with_util) < len(model)
    for r in with_util:
        util = sim.device_state(0, t_of(r["ts_ns"]))["util_gpu_pct"]
        assert r["sm_util_pct"] == sim.proc_sm_util(util, 0)
    assert rows(rec, "gpu_processes", gpu=1) == []


def test_process_utilization_unsupported_leaves_memory(tmp_path):
    scen = {"devices": [{"unsupported": ["nvmlDeviceGetProcessUtilization"], "main_pid": 777}]}
    clock, sim, sess, s = make(tmp_path, scen)
    s.start(sess.ctx)
    run(s, clock, 1.0)
    s.stop()
    rec = sess.close()
    r = rows(rec, "gpu_processes", pid=777)
    assert len(r) == 10
    assert all(x["sm_util_pct"] is None and x["used_bytes"] > 0 for x in r)
    assert all(x["in_target"] is False for x in r)


class OldBinding(nvml_sim.SimulatedNvml):
    """An nvidia-ml-py from before the v2 memory struct and the clocks-event names."""

    @property
    def nvmlDeviceGetCurrentClocksEventReasons(self):  # noqa: N802
        raise AttributeError("nvmlDeviceGetCurrentClocksEventReasons")

    @property
    def nvmlMemory_v2(self):  # noqa: N802
        raise AttributeError("nvmlMemory_v2")


def test_old_binding_falls_back(tmp_path):
    clock = FakeClock()
    sim = OldBinding(clock=clock)
    assert not hasattr(sim, "nvmlDeviceGetCurrentClocksEventReasons")
    sess = Session(tmp_path)
    s = NvmlSampler({"gpu_slow_thread": False}, nvml=sim, clock=clock)
    s.start(sess.ctx)
    run(s, clock, 4.0)
    s.stop()
    rec = sess.close()
    for r in rows(rec, "gpu_devices", gpu=0):
        want = sim.device_state(0, t_of(r["ts_ns"]))
        assert r["clocks_event_reasons"] == want["clocks_event_reasons"]  # via the old name
        assert r["mem_used_bytes"] == want["mem_used_bytes"] + want["mem_reserved_bytes"]  # v1
        assert r["mem_reserved_bytes"] is None
    assert any(r["clocks_event_reasons"] == 0x4 for r in rows(rec, "gpu_devices", gpu=0))
    assert s.info()["devices"][0]["memory_info"] == "v1"


def test_env_pids_hook_without_the_target_hook(monkeypatch):
    monkeypatch.setenv("AUTOGLM_TRACE_NVML_SIM_PIDS", "4321,99")
    sim = nvml_sim.SimulatedNvml()
    assert sim.main_pid(0) == 4321


def test_gpu_interval_option(tmp_path):
    clock, sim, sess, s = make(tmp_path, options={"gpu_interval_ms": 500})
    s.start(sess.ctx)
    run(s, clock, 5.0)
    s.stop()
    rec = sess.close()
    assert len(rows(rec, "gpu_devices", gpu=0)) == 10


def test_oom_scenario_is_recognisable(tmp_path):
    """GPU memory at the device limit, held by the target, with a time-to-full alert first."""
    clock, sim, sess, s = make(tmp_path, "oom")
    s.start(sess.ctx)
    run(s, clock, 15.0)
    s.stop()
    rec = sess.close()
    g = rows(rec, "gpu_devices", gpu=0)
    full = [r for r in g if r["mem_free_bytes"] == 0]
    assert full, "the oom scenario must fill the device"
    first_full = min(r["ts_ns"] for r in full)
    alerts = [a for a in rec.table("alerts").to_pylist() if a["kind"] == "gpu_memory_growth"]
    assert alerts and alerts[0]["ts_ns"] < first_full
    assert alerts[0]["subject"] == "GPU0"
    assert alerts[0]["limit"] == 40 * GiB
    # Predicted time of full vs when it happened (linear growth: within a step or two).
    predicted = alerts[0]["ts_ns"] + alerts[0]["eta_s"] * NS
    assert abs(predicted - first_full) <= 3 * STEP
    top = max((r for r in rec.table("gpu_processes").to_pylist() if r["ts_ns"] == first_full), key=lambda r: r["used_bytes"])
    assert top["in_target"] is True


# ------------------------------------------------------------------------------------------------
# No NVML at all
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scen,words",
    [
        ({"library": False}, "libnvidia-ml.so.1"),
        ({"driver_loaded": False}, "driver is not loaded"),
        ({"devices": []}, "no GPU"),
    ],
)
def test_unavailable_with_a_clear_reason(tmp_path, scen, words):
    clock, sim, sess, s = make(tmp_path, scen)
    with pytest.raises(CollectorUnavailable, match=words):
        s.start(sess.ctx)
    ok, msg = nvml_check(nvml_sim.SimulatedNvml(scen))
    assert ok is False and words in msg
    assert sim._init_count == 0  # nothing left initialised


def _real_libnvml_loads() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        return True
    except OSError:
        return False


def test_real_pynvml_without_a_driver(tmp_path, monkeypatch):
    if _real_libnvml_loads():
        pytest.skip("this machine has libnvidia-ml.so.1; the no-driver path cannot be exercised")
    monkeypatch.delenv("AUTOGLM_TRACE_NVML", raising=False)
    sess = Session(tmp_path)
    with pytest.raises(CollectorUnavailable, match="libnvidia-ml.so.1"):
        NvmlSampler({}).start(sess.ctx)
    ok, msg = nvml_check()
    assert not ok and "AUTOGLM_TRACE_NVML=simulated" in msg


def test_no_pynvml_package(monkeypatch):
    monkeypatch.delenv("AUTOGLM_TRACE_NVML", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with pytest.raises(CollectorUnavailable, match="nvidia-ml-py"):
        load_nvml()


def test_backend_selection(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOGLM_TRACE_NVML", "simulated")
    monkeypatch.delenv("AUTOGLM_TRACE_NVML_SCENARIO", raising=False)
    b = load_nvml()
    assert isinstance(b, nvml_sim.SimulatedNvml) and len(b.devices) == 2
    monkeypatch.setenv("AUTOGLM_TRACE_NVML_SCENARIO", "oom")
    assert len(load_nvml().devices) == 1
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"devices": [{}, {}, {"name": "third"}]}))
    monkeypatch.setenv("AUTOGLM_TRACE_NVML_SCENARIO", str(p))
    assert load_nvml().devices[2].spec["name"] == "third"
    monkeypatch.setenv("AUTOGLM_TRACE_NVML_SCENARIO", str(tmp_path / "missing.json"))
    with pytest.raises(CollectorUnavailable, match="scenario"):
        load_nvml()
    monkeypatch.setenv("AUTOGLM_TRACE_NVML", "bogus")
    with pytest.raises(CollectorUnavailable, match="bogus"):
        load_nvml()
    monkeypatch.setenv("AUTOGLM_TRACE_NVML", "real")
    import pynvml

    assert load_nvml() is pynvml


def test_nvml_check_simulated():
    ok, msg = nvml_check(nvml_sim.SimulatedNvml())
    assert ok
    assert "2 GPU(s)" in msg and "H100" in msg and "SIMULATED" in msg and "driver 550.54.15" in msg


def test_sim_matches_pynvml_names():
    """Every NVML call the sampler makes exists in the installed pynvml with the same name, and
    every constant the sim defines has pynvml's value."""
    pynvml = pytest.importorskip("pynvml")
    import inspect

    from autoglm_trace.probes import nvml as nvml_mod

    src = inspect.getsource(nvml_mod)
    used = {name for name in dir(nvml_sim.SimulatedNvml) if name.startswith("nvml") and f'"{name}"' in src}
    used |= {"nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlEventSetCreate", "nvmlEventSetWait_v2"}
    for name in sorted(used):
        assert hasattr(pynvml, name), name
    for name in dir(nvml_sim):
        if name.startswith(("NVML_", "nvmlEventType", "nvmlClocksEventReason")) or name == "nvmlMemory_v2":
            assert getattr(pynvml, name) == getattr(nvml_sim, name), name


@pytest.mark.gpu
def test_real_gpu_records(tmp_path, monkeypatch):
    if not _real_libnvml_loads():
        pytest.skip("no libnvidia-ml.so.1 (no NVIDIA driver) on this machine")
    monkeypatch.delenv("AUTOGLM_TRACE_NVML", raising=False)
    sess = Session(tmp_path)
    s = NvmlSampler({})
    s.start(sess.ctx)
    for _ in range(5):
        s.sample(time.monotonic_ns())
        time.sleep(0.1)
    s.stop()
    rec = sess.close()
    dev = rec.table("gpu_devices").to_pylist()
    assert dev and all(r["mem_total_bytes"] for r in dev)
    assert all(d["uuid"] for d in s.info()["devices"])
