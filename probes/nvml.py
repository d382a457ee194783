"""NVIDIA GPU sampling through NVML (``pynvml`` from nvidia-ml-py), on the recording's clock.

Tables: ``gpu_devices`` (per GPU per sample), ``gpu_processes`` (per GPU per compute process per
sample), ``gpu_events`` (Xid / ECC events from a blocking event-set wait in its own thread, plus a
``lost`` row when a device falls off the bus) and ``alerts`` (GPU memory time-to-full, from
``probes.growth``). docs/format-gpu.md documents every column and NVML's averaging windows.

Robustness rules (issue 4): NVML is initialised once and device handles are cached; every field
is read by its own call, so a call that fails loses only that value. A call answering NOT_SUPPORTED,
NO_PERMISSION or FUNCTION_NOT_FOUND (or missing from an old binding) is never asked again on that
device and the recording says so once (``ctx.note``). GPU_IS_LOST marks that one device lost:
the others keep being sampled. No library / no driver / no GPU is ``CollectorUnavailable`` with
the fix in the reason.

Cost: PCIe throughput is measured by the driver over a 20 ms interval *per call* (nvml.h,
nvmlDeviceGetPcieThroughput), i.e. 40 ms per device for TX + RX. So it and the ECC counters (which
rarely move) are read on a slower cadence (``gpu_slow_interval_ms``, default 1000) by a side thread
(``nvml-slow``), never on the recorder's sampling thread; each reading lands in the next
``gpu_devices`` row of its device and those columns are null in the other rows. NVML is
thread-safe (nvml.h: "NVML is thread-safe so it is safe to make simultaneous NVML calls from
multiple threads"). ``gpu_slow_thread=False`` reads them inline on every slow tick instead
(deterministic; the unit tests use it).

The backend is the ``nvml`` object handed to the constructor, or the one probes/nvml_backend.py
chooses at start: the real ``pynvml`` module, or the simulated driver (``probes.nvml_sim``) when
``AUTOGLM_TRACE_NVML=simulated``. Both sit behind the same interface (``NvmlBackend``), so the code
below never asks which one it has.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoglm_trace.collector import Collector, CollectorUnavailable, SessionContext
from autoglm_trace.probes.growth import GrowthEstimator
from autoglm_trace.probes.nvml_backend import ENV_BACKEND, as_backend, load_nvml
from autoglm_trace.signals import CLOCK_EVENTS

# nvmlReturn_t codes (nvml.h); read from the backend when it defines them.
_ERROR_CODES = {
    "NOT_SUPPORTED": 3,
    "NO_PERMISSION": 4,
    "NOT_FOUND": 6,
    "DRIVER_NOT_LOADED": 9,
    "TIMEOUT": 10,
    "LIBRARY_NOT_FOUND": 12,
    "FUNCTION_NOT_FOUND": 13,
    "GPU_IS_LOST": 15,
    "RESET_REQUIRED": 16,
    "LIB_RM_VERSION_MISMATCH": 18,
    "ARGUMENT_VERSION_MISMATCH": 25,
    "GPU_NOT_FOUND": 28,
    "UNINITIALIZED": 1,
}

# Clocks-event (throttle) reason bits, nvml.h nvmlClocksEventReason* (declared once, in the signals module).
CLOCKS_EVENT_REASONS: dict[int, str] = {e.bit: e.nvml for e in CLOCK_EVENTS}

# nvmlEventType* bits we register for, and the name each gets in gpu_events.event.
_EVENT_XID = 0x8
_EVENT_SBE = 0x1
_EVENT_DBE = 0x2
_EVENT_NAMES = {_EVENT_XID: "xid", _EVENT_SBE: "single_bit_ecc", _EVENT_DBE: "double_bit_ecc", 0x4: "pstate", 0x10: "clock"}


def reason_names(mask: int | None) -> list[str]:
    """0x0C -> ['SwPowerCap', 'HwSlowdown'] (unknown bits as hex)."""
    if not mask:
        return []
    out = [name for bit, name in CLOCKS_EVENT_REASONS.items() if mask & bit]
    rest = mask & ~sum(CLOCKS_EVENT_REASONS)
    if rest:
        out.append(hex(rest))
    return out


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _handle_key(h: Any) -> int:
    """A stable key for a device handle: the pointer value of pynvml's ctypes handle, or the
    identity of any other object (the simulated backend's)."""
    try:
        return int(ctypes.cast(h, ctypes.c_void_p).value or 0) or id(h)
    except (TypeError, ctypes.ArgumentError):
        return id(h)


@dataclass
class _Device:
    index: int
    handle: Any
    uuid: str | None = None
    name: str | None = None
    pci_bus_id: str | None = None
    mem_total: int | None = None
    lost: bool = False
    off: dict[str, str] = field(default_factory=dict)  # field -> why it is not read any more
    failures: dict[str, int] = field(default_factory=dict)  # consecutive transient failures
    proc_util_ts: int = 0  # last per-process utilisation timestamp seen (us)
    mem_v2: bool = True
    mem_used_frac: float | None = None
    slow: dict[str, Any] | None = None  # the side thread's latest PCIe / ECC reading, not yet emitted


class NvmlSampler(Collector):
    """Samples every NVML device each ``gpu_interval_ms`` (default 100)."""

    name = "gpu"
    tables = ("gpu_devices", "gpu_processes", "gpu_events", "alerts")

    # A transient error this many times in a row on one field: stop asking, say so.
    MAX_CONSECUTIVE_FAILURES = 20

    def __init__(
        self,
        options: dict[str, Any] | None = None,
        nvml: Any = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        super().__init__()
        self.options = dict(options or {})
        self.nvml = nvml
        self._clock = clock
        self.devices: list[_Device] = []
        self._by_key: dict[int, int] = {}
        self._driver_version: str | None = None
        self._nvml_version: str | None = None
        self._initialised = False
        # --gpu-interval, else the recorder's interval, else 100 ms.
        self._interval_ns = int(float(self.options.get("gpu_interval_ms") or self.options.get("interval_ms") or 100) * 1e6)
        self._slow_ns = int(float(self.options.get("gpu_slow_interval_ms", 1000)) * 1e6)
        self._next_ns = 0
        self._next_slow_ns = 0
        self._slow_thread_on = bool(self.options.get("gpu_slow_thread", True))
        self._slow_thread: threading.Thread | None = None
        self._slow_lock = threading.Lock()
        self._growth = GrowthEstimator(
            kind="gpu_memory_growth",
            threshold_s=float(self.options.get("gpu_growth_eta_s", 300)),
            what="memory",
        )
        self._events: deque[dict[str, Any]] = deque()
        self._event_set: Any = None
        self._event_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._event_wait_ms = int(self.options.get("gpu_event_wait_ms", 250))
        self.events_status = "not started"
        # Counters for status / the benchmark.
        self.samples = 0
        self.calls = 0
        self.errors = 0
        self._codes = dict(_ERROR_CODES)

    # ------------------------------------------------------------------------------------------
    # Start
    # ------------------------------------------------------------------------------------------
    def _code(self, name: str) -> int:
        return int(getattr(self.nvml, f"NVML_ERROR_{name}", self._codes[name]))

    def _const(self, name: str, default: Any) -> Any:
        return getattr(self.nvml, name, default)

    def _note(self, msg: str) -> None:
        if self.ctx is not None:
            self.ctx.note(msg)

    def start(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.nvml = as_backend(self.nvml if self.nvml is not None else load_nvml())
        nvml = self.nvml
        err_cls = nvml.NVMLError
        try:
            nvml.nvmlInit()
        except err_cls as e:
            raise CollectorUnavailable(self._init_failure(e)) from None
        except OSError as e:  # a broken libnvidia-ml.so that ctypes cannot load
            raise CollectorUnavailable(f"NVML could not be loaded: {e}") from None
        self._initialised = True
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except err_cls as e:
            self._shutdown()
            raise CollectorUnavailable(f"NVML cannot count GPUs: {e}") from None
        if count == 0:
            self._shutdown()
            raise CollectorUnavailable("NVML works but reports no GPU (nvidia-smi -L lists none either?)")
        for call, attr in (("nvmlSystemGetDriverVersion", "_driver_version"), ("nvmlSystemGetNVMLVersion", "_nvml_version")):
            try:
                setattr(self, attr, _text(getattr(nvml, call)()))
            except Exception:  # noqa: BLE001 - identity is best effort
                pass
        for i in range(count):
            try:
                h = nvml.nvmlDeviceGetHandleByIndex(i)
            except err_cls as e:
                self._note(f"GPU{i}: no handle ({e}); not sampled")
                continue
            dev = _Device(index=i, handle=h)
            self._identify(dev)
            self.devices.append(dev)
            self._by_key[_handle_key(h)] = i
        if not self.devices:
            self._shutdown()
            raise CollectorUnavailable(f"NVML reports {count} GPU(s) but none could be opened")
        if ctx.target is not None:
            nvml.set_target(self._target_pids)
        if self.options.get("gpu_events", True):
            self._start_events()
        else:
            self.events_status = "off (gpu_events=False)"
        if self._slow_thread_on:
            self._slow_thread = threading.Thread(target=self._slow_loop, name="nvml-slow", daemon=True)
            self._slow_thread.start()

    def _init_failure(self, e: Any) -> str:
        code = getattr(e, "value", None)
        if code == self._code("LIBRARY_NOT_FOUND"):
            return (
                "no NVIDIA driver: libnvidia-ml.so.1 was not found (install the NVIDIA driver; "
                f"for a simulated GPU, a testing aid, set {ENV_BACKEND}=simulated)"
            )
        if code == self._code("DRIVER_NOT_LOADED"):
            return "the NVIDIA kernel driver is not loaded (check `nvidia-smi`, `modprobe nvidia`)"
        if code == self._code("NO_PERMISSION"):
            return "no permission to open the GPU device nodes (/dev/nvidia*); run as root or fix their mode"
        if code == self._code("LIB_RM_VERSION_MISMATCH"):
            return "NVML library and kernel driver versions differ (reboot or reload the driver after an upgrade)"
        return f"NVML initialisation failed: {e}"

    def _identify(self, dev: _Device) -> None:
        for attr, call in (("uuid", "nvmlDeviceGetUUID"), ("name", "nvmlDeviceGetName")):
            v = self._call(dev, "identity", call, dev.handle, quiet=True)
            if v is not None:
                setattr(dev, attr, _text(v))
        pci = self._call(dev, "identity", "nvmlDeviceGetPciInfo", dev.handle, quiet=True)
        if pci is not None:
            dev.pci_bus_id = _text(getattr(pci, "busId", b"") or getattr(pci, "busIdLegacy", b""))
        mem = self._read_memory(dev)
        if mem is not None:
            dev.mem_total = int(mem[0])
        dev.off.pop("identity", None)

    def _target_pids(self) -> list[int]:
        """The target's pids, root first (the backend's ``set_target``)."""
        t = self.ctx.target if self.ctx is not None else None
        if t is None:
            return []
        pids = list(t.pids())
        root = getattr(t, "root_pid", None)
        if root is not None:
            pids = [root] + [p for p in pids if p != root]
        return pids

    # ------------------------------------------------------------------------------------------
    # One NVML call, with the failure policy
    # ------------------------------------------------------------------------------------------
    def _call(self, dev: _Device, what: str, fn: str, *args: Any, quiet: bool = False, **kw: Any) -> Any:
        """``nvml.<fn>(*args)`` or None; a failure costs only this value (see the module doc)."""
        if dev.lost or what in dev.off:
            return None
        self.calls += 1
        try:
            out = getattr(self.nvml, fn)(*args, **kw)
        except self.nvml.NVMLError as e:
            self._failed(dev, what, fn, getattr(e, "value", None), str(e), quiet)
            return None
        except (AttributeError, TypeError) as e:
            # The installed binding lacks the function or its signature (old nvidia-ml-py).
            self._disable(dev, what, f"{fn} is not in this pynvml ({type(e).__name__}: {e})", quiet)
            return None
        dev.failures.pop(what, None)
        return out

    def _failed(self, dev: _Device, what: str, fn: str, code: int | None, text: str, quiet: bool) -> None:
        self.errors += 1
        if code in (self._code("NOT_SUPPORTED"), self._code("NO_PERMISSION"), self._code("FUNCTION_NOT_FOUND")):
            self._disable(dev, what, f"{fn}: {text}", quiet)
        elif code in (self._code("GPU_IS_LOST"), self._code("RESET_REQUIRED"), self._code("GPU_NOT_FOUND")):
            self._lose(dev, code, f"{fn}: {text}")
        else:
            n = dev.failures[what] = dev.failures.get(what, 0) + 1
            if n == 1 and not quiet:
                self._note(f"GPU{dev.index}: {fn} failed ({text}); that value is left empty while it fails")
            if n >= self.MAX_CONSECUTIVE_FAILURES:
                self._disable(dev, what, f"{fn} failed {n} times in a row ({text})", quiet)

    def _disable(self, dev: _Device, what: str, why: str, quiet: bool = False) -> None:
        if what not in dev.off:
            dev.off[what] = why
            if not quiet:
                self._note(f"GPU{dev.index}: {what} not available ({why}); not read again, column left empty")

    def _lose(self, dev: _Device, code: int | None, why: str) -> None:
        if dev.lost:
            return
        dev.lost = True
        self._growth.forget(f"GPU{dev.index}")
        self._note(f"GPU{dev.index} was lost ({why}); the other GPUs keep being sampled")
        self._events.append(
            {"ts_ns": self._clock(), "gpu": dev.index, "event": "lost", "data": code, "pid": None}
        )

    # ------------------------------------------------------------------------------------------
    # Sampling
    # ------------------------------------------------------------------------------------------
    def _read_memory(self, dev: _Device) -> tuple[int, int, int, int | None] | None:
        """(total, used, free, reserved) -- v2 (reserved apart) where the driver has it."""
        if dev.mem_v2 and "memory" not in dev.off and not dev.lost:
            v2 = self._const("nvmlMemory_v2", None)
            if v2 is None:
                dev.mem_v2 = False
            else:
                self.calls += 1
                try:
                    m = self.nvml.nvmlDeviceGetMemoryInfo(dev.handle, version=v2)
                    return int(m.total), int(m.used), int(m.free), int(m.reserved)
                except self.nvml.NVMLError as e:
                    code = getattr(e, "value", None)
                    if code in (self._code("GPU_IS_LOST"), self._code("RESET_REQUIRED"), self._code("GPU_NOT_FOUND")):
                        self._lose(dev, code, f"nvmlDeviceGetMemoryInfo_v2: {e}")
                        return None
                    if code not in (
                        self._code("NOT_SUPPORTED"),
                        self._code("FUNCTION_NOT_FOUND"),
                        self._code("ARGUMENT_VERSION_MISMATCH"),
                    ):
                        self._failed(dev, "memory", "nvmlDeviceGetMemoryInfo_v2", code, str(e), False)
                        return None
                    dev.mem_v2 = False  # an old driver: fall back to v1 (used includes reserved)
                    self._note(f"GPU{dev.index}: v2 memory info unavailable ({e}); v1 used, mem_used_bytes includes reserved memory")
                except TypeError:
                    dev.mem_v2 = False
        m = self._call(dev, "memory", "nvmlDeviceGetMemoryInfo", dev.handle)
        if m is None:
            return None
        return int(m.total), int(m.used), int(m.free), None

    def sample(self, now_ns: int) -> None:
        if not self.devices or now_ns < self._next_ns - self._interval_ns // 10:
            self._drain_events()
            return
        self._next_ns = now_ns + self._interval_ns
        # Tolerance of half a fast interval, so recorder jitter does not skip a slow tick.
        slow = not self._slow_thread_on and now_ns >= self._next_slow_ns - self._interval_ns // 2
        if slow:
            self._next_slow_ns = now_ns + self._slow_ns
        self.samples += 1
        dev_rows: list[dict[str, Any]] = []
        proc_rows: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        for dev in self.devices:
            if dev.lost:
                continue
            row = self._sample_device(dev, now_ns, slow)
            if dev.lost and len(row) <= 2:
                continue
            dev_rows.append(row)
            proc_rows += self._sample_processes(dev, now_ns)
            total, free = row.get("mem_total_bytes"), row.get("mem_free_bytes")
            if total and free is not None:
                in_use = total - free  # used + reserved, v1 or v2 alike: full when free reaches 0
                dev.mem_used_frac = in_use / total
                alert = self._growth.observe(f"GPU{dev.index}", now_ns, in_use, total)
                if alert is not None:
                    alerts.append(alert)
        if self.ctx is not None:
            self.ctx.emit("gpu_devices", dev_rows)
            self.ctx.emit("gpu_processes", proc_rows)
            self.ctx.emit("alerts", alerts)
        self._drain_events()

    def _sample_device(self, dev: _Device, now_ns: int, slow: bool) -> dict[str, Any]:
        nvml, h = self.nvml, dev.handle
        row: dict[str, Any] = {"ts_ns": now_ns, "gpu": dev.index}
        mem = self._read_memory(dev)
        if mem is not None:
            row["mem_total_bytes"], row["mem_used_bytes"], row["mem_free_bytes"], row["mem_reserved_bytes"] = mem
        u = self._call(dev, "utilization", "nvmlDeviceGetUtilizationRates", h)
        if u is not None:
            row["util_gpu_pct"], row["util_mem_pct"] = float(u.gpu), float(u.memory)
        row["sm_clock_mhz"] = self._call(dev, "sm_clock", "nvmlDeviceGetClockInfo", h, self._const("NVML_CLOCK_SM", 1))
        row["mem_clock_mhz"] = self._call(dev, "mem_clock", "nvmlDeviceGetClockInfo", h, self._const("NVML_CLOCK_MEM", 2))
        row["power_mw"] = self._call(dev, "power", "nvmlDeviceGetPowerUsage", h)
        row["power_limit_mw"] = self._call(dev, "power_limit", "nvmlDeviceGetEnforcedPowerLimit", h)
        row["energy_mj"] = self._call(dev, "energy", "nvmlDeviceGetTotalEnergyConsumption", h)
        row["temp_c"] = self._call(dev, "temperature", "nvmlDeviceGetTemperature", h, self._const("NVML_TEMPERATURE_GPU", 0))
        if hasattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons"):
            row["clocks_event_reasons"] = self._call(dev, "clocks_event_reasons", "nvmlDeviceGetCurrentClocksEventReasons", h)
        else:  # nvidia-ml-py before 12.535: the deprecated name of the same call
            row["clocks_event_reasons"] = self._call(dev, "clocks_event_reasons", "nvmlDeviceGetCurrentClocksThrottleReasons", h)
        if slow:
            row.update(self._read_slow(dev))
        elif self._slow_thread_on:
            with self._slow_lock:
                reading, dev.slow = dev.slow, None
            if reading:
                row.update(reading)
        if dev.lost:
            return {"ts_ns": now_ns, "gpu": dev.index}
        return row

    def _read_slow(self, dev: _Device) -> dict[str, Any]:
        """PCIe throughput (blocks ~20 ms per call in the driver) and volatile ECC totals."""
        h = dev.handle
        vol = self._const("NVML_VOLATILE_ECC", 0)
        return {
            "pcie_tx_kbps": self._call(dev, "pcie", "nvmlDeviceGetPcieThroughput", h, self._const("NVML_PCIE_UTIL_TX_BYTES", 0)),
            "pcie_rx_kbps": self._call(dev, "pcie", "nvmlDeviceGetPcieThroughput", h, self._const("NVML_PCIE_UTIL_RX_BYTES", 1)),
            "ecc_corrected": self._call(dev, "ecc", "nvmlDeviceGetTotalEccErrors", h, self._const("NVML_MEMORY_ERROR_TYPE_CORRECTED", 0), vol),
            "ecc_uncorrected": self._call(dev, "ecc", "nvmlDeviceGetTotalEccErrors", h, self._const("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1), vol),
        }

    def _slow_loop(self) -> None:
        period = self._slow_ns / 1e9
        while not self._stop.is_set():
            began = time.monotonic()
            for dev in self.devices:
                if self._stop.is_set():
                    return
                if dev.lost or ("pcie" in dev.off and "ecc" in dev.off):
                    continue
                reading = self._read_slow(dev)
                if any(v is not None for v in reading.values()):
                    with self._slow_lock:
                        dev.slow = reading
            self._stop.wait(max(0.0, period - (time.monotonic() - began)))

    def _sample_processes(self, dev: _Device, now_ns: int) -> list[dict[str, Any]]:
        procs = self._call(dev, "processes", "nvmlDeviceGetComputeRunningProcesses", dev.handle)
        if not procs:
            return []
        util = self._process_utilization(dev)
        target = self.ctx.target if self.ctx is not None else None
        rows = []
        for p in procs:
            pid = int(p.pid)
            used = getattr(p, "usedGpuMemory", None)
            sample = util.get(pid)
            rows.append(
                {
                    "ts_ns": now_ns,
                    "gpu": dev.index,
                    "pid": pid,
                    "in_target": bool(target.contains(pid)) if target is not None else None,
                    "used_bytes": int(used) if used is not None else None,
                    "sm_util_pct": float(sample.smUtil) if sample is not None else None,
                    "mem_util_pct": float(sample.memUtil) if sample is not None else None,
                }
            )
        return rows

    def _process_utilization(self, dev: _Device) -> dict[int, Any]:
        """Latest per-process utilisation sample per pid since the last one seen (NOT_FOUND:
        nothing new, which is not a failure)."""
        what = "process_utilization"
        if dev.lost or what in dev.off:
            return {}
        self.calls += 1
        try:
            samples = self.nvml.nvmlDeviceGetProcessUtilization(dev.handle, dev.proc_util_ts)
        except self.nvml.NVMLError as e:
            code = getattr(e, "value", None)
            if code != self._code("NOT_FOUND"):
                self._failed(dev, what, "nvmlDeviceGetProcessUtilization", code, str(e), False)
            return {}
        except (AttributeError, TypeError) as e:
            self._disable(dev, what, f"nvmlDeviceGetProcessUtilization is not in this pynvml ({e})")
            return {}
        latest: dict[int, Any] = {}
        for s in samples:
            ts = int(s.timeStamp)
            dev.proc_util_ts = max(dev.proc_util_ts, ts)
            prev = latest.get(int(s.pid))
            if prev is None or int(prev.timeStamp) <= ts:
                latest[int(s.pid)] = s
        return latest

    # ------------------------------------------------------------------------------------------
    # Events (Xid, ECC) in their own thread: nvmlEventSetWait blocks
    # ------------------------------------------------------------------------------------------
    def _start_events(self) -> None:
        nvml = self.nvml
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except (nvml.NVMLError, AttributeError) as e:
            self.events_status = f"unavailable ({e})"
            self._note(f"GPU events (Xid) not recorded: nvmlEventSetCreate: {e}")
            return
        wanted = (
            self._const("nvmlEventTypeXidCriticalError", _EVENT_XID)
            | self._const("nvmlEventTypeSingleBitEccError", _EVENT_SBE)
            | self._const("nvmlEventTypeDoubleBitEccError", _EVENT_DBE)
        )
        registered = []
        for dev in self.devices:
            supported = self._call(dev, "events", "nvmlDeviceGetSupportedEventTypes", dev.handle, quiet=True)
            mask = wanted & int(supported) if supported is not None else wanted
            if not mask:
                self._note(f"GPU{dev.index}: no Xid / ECC events on this device")
                continue
            if self._call(dev, "events", "nvmlDeviceRegisterEvents", dev.handle, mask, self._event_set, quiet=True) is None and "events" in dev.off:
                self._note(f"GPU{dev.index}: Xid events not available ({dev.off['events']})")
                continue
            registered.append(dev.index)
        if not registered:
            self.events_status = "no device supports Xid events"
            self._free_event_set()
            return
        self.events_status = "xid/ecc on " + ",".join(f"GPU{i}" for i in registered)
        self._event_thread = threading.Thread(target=self._event_loop, name="nvml-events", daemon=True)
        self._event_thread.start()

    def _event_loop(self) -> None:
        nvml = self.nvml
        timeout_code = self._code("TIMEOUT")
        failures = 0
        while not self._stop.is_set():
            try:
                data = nvml.nvmlEventSetWait_v2(self._event_set, self._event_wait_ms)
            except nvml.NVMLError as e:
                if getattr(e, "value", None) == timeout_code:
                    failures = 0
                    continue
                failures += 1
                if failures == 1:
                    self._note(f"GPU event wait failed ({e}); retrying")
                if failures >= 10:
                    self._note(f"GPU event wait keeps failing ({e}); Xid events no longer recorded")
                    self.events_status = f"stopped ({e})"
                    return
                self._stop.wait(self._event_wait_ms / 1000)
                continue
            failures = 0
            ts = self._clock()
            etype = int(getattr(data, "eventType", 0))
            name = next((n for bit, n in _EVENT_NAMES.items() if etype & bit), "other")
            gpu = self._by_key.get(_handle_key(getattr(data, "device", None)), -1)
            self._events.append({"ts_ns": ts, "gpu": gpu, "event": name, "data": int(getattr(data, "eventData", 0)), "pid": None})

    def _drain_events(self) -> None:
        rows = []
        while self._events:
            rows.append(self._events.popleft())
        if rows and self.ctx is not None:
            rows.sort(key=lambda r: r["ts_ns"])
            self.ctx.emit("gpu_events", rows)

    def _free_event_set(self) -> None:
        if self._event_set is not None:
            try:
                self.nvml.nvmlEventSetFree(self._event_set)
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
            self._event_set = None

    # ------------------------------------------------------------------------------------------
    # Stop, status, info
    # ------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        if self._slow_thread is not None:
            self._slow_thread.join(timeout=5.0)
            self._slow_thread = None
        if self._event_thread is not None:
            self._event_thread.join(timeout=self._event_wait_ms / 1000 + 2.0)
            self._event_thread = None
        self._drain_events()
        self._free_event_set()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._initialised:
            self._initialised = False
            try:
                self.nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass

    def status(self) -> dict[str, Any]:
        fracs = [d.mem_used_frac for d in self.devices if not d.lost and d.mem_used_frac is not None]
        out: dict[str, Any] = {"gpus": sum(1 for d in self.devices if not d.lost)}
        if fracs:
            out["mem_used_frac_max"] = round(max(fracs), 4)
        lost = [d.index for d in self.devices if d.lost]
        if lost:
            out["lost"] = lost
        return out

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.nvml.backend_info()) if self.nvml is not None else {}
        return out | {
            "backend": self.nvml.backend_kind if self.nvml is not None else None,
            "driver_version": self._driver_version,
            "nvml_version": self._nvml_version,
            "interval_ms": self._interval_ns / 1e6,
            "slow_interval_ms": self._slow_ns / 1e6,
            "slow_fields": "side thread" if self._slow_thread_on else "inline",
            "events": self.events_status,
            "devices": [
                {
                    "index": d.index,
                    "uuid": d.uuid,
                    "name": d.name,
                    "pci_bus_id": d.pci_bus_id,
                    "memory_total_bytes": d.mem_total,
                    "driver_version": self._driver_version,
                    "memory_info": "v2" if d.mem_v2 else "v1",
                    "unavailable": dict(d.off),
                    "lost": d.lost,
                }
                for d in self.devices
            ],
        }


def nvml_check(nvml: Any = None) -> tuple[bool, str]:
    """For ``doctor``: what NVML says, or why it is unavailable and how to fix it."""
    try:
        if nvml is None:
            nvml = load_nvml()
    except CollectorUnavailable as e:
        return False, str(e)
    s = NvmlSampler({"gpu_events": False, "gpu_slow_thread": False}, nvml=nvml)
    ctx = SessionContext(
        emit_rows=lambda t, r: None,
        emit_columns_fn=lambda t, c: None,
        emit_batch_fn=lambda t, b: None,
        target=None,
    )
    try:
        s.start(ctx)
    except CollectorUnavailable as e:
        return False, str(e)
    try:
        info = s.info()
        gib = 1 << 30
        devs = "; ".join(
            f"GPU{d['index']} {d['name']} ({(d['memory_total_bytes'] or 0) / gib:.0f} GiB, {d['pci_bus_id']})"
            for d in info["devices"]
        )
        msg = (f"NVML {info['nvml_version'] or '?'}, driver {info['driver_version'] or '?'}: "
               f"{len(info['devices'])} GPU(s): {devs}{s.nvml.backend_notice}")
        if ctx.notes:
            msg += " (" + "; ".join(ctx.notes) + ")"
        return True, msg
    finally:
        s.stop()
