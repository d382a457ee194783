"""A simulated NVML backend: a stand-in for ``pynvml`` (nvidia-ml-py) in tests, demos and benchmarks.

TESTING AID. Select it with ``AUTOGLM_TRACE_NVML=simulated``; it never talks to a GPU. The NVML
sampler (``probes.nvml``) is handed this object exactly as it is handed the real ``pynvml``
module, so the real sampler code runs unchanged: the same function names and arguments, the same
``NVMLError`` with ``.value`` codes and ``NVML_ERROR_*`` constants, and return values shaped like
pynvml's (ctypes structs with ``.total`` / ``.used`` ..., friendly objects with ``.pid`` /
``.usedGpuMemory``, ``busId`` as bytes as the ctypes struct gives it, names and UUIDs as str).

What it serves is a pure function of the time since the simulation started (its ``clock``,
CLOCK_MONOTONIC ns by default), so a test that drives the clock can compare what was recorded with
``SimulatedNvml.device_state(index, t_s)``. The scenario (``DEFAULT_SCENARIO``, the built-in
``"oom"``, or a JSON file named by ``AUTOGLM_TRACE_NVML_SCENARIO``) describes per device:

* memory: ``weights_bytes`` resident from the start plus a KV cache growing by
  ``kv_growth_bytes_per_s`` from ``kv_start_s`` up to ``kv_cap_bytes`` (null: up to the device's
  capacity, i.e. the GPU fills up -- the CUDA out-of-memory picture);
* utilisation (sine around ``util_base_pct``), clocks, power, temperature, energy, PCIe, ECC;
* ``throttle`` windows with named clocks-event reasons (SwPowerCap, HwSlowdown ...): SM clock drops
  and the reasons bitmask is set while they last;
* ``xid`` events delivered through the event set at given times;
* ``unsupported``: function names that raise NOT_SUPPORTED on this device; ``errors``: windows in
  which a function raises another code (transient failures); ``memory_v2: false``: the v2 memory
  call is missing (FUNCTION_NOT_FOUND, as with an old driver);
* ``lost_at_s``: the device falls off the bus: every call on it raises GPU_IS_LOST from then on,
  and an Xid 79 is delivered;
* processes: the model process (``main_pid``; by default the target's root pid, see below) holds
  weights + KV cache; ``foreign`` processes hold fixed amounts.

Top level: ``library: false`` (libnvidia-ml.so missing -> LIBRARY_NOT_FOUND at init),
``driver_loaded: false`` (DRIVER_NOT_LOADED), ``devices: []`` (a driver with no GPU).

Making the simulated processes the real target: the sampler calls every backend's
``set_target(pids_fn)`` (probes/nvml_backend.py; a no-op for the real driver), ``pids_fn()``
returning the target's pids with the root first; the first is reported as the model process, so demo recordings show
``in_target = true``. Without it, ``AUTOGLM_TRACE_NVML_SIM_PIDS=123,456`` (or the scenario's
``main_pid``) names them; failing both, a fixed fake pid is used.
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from autoglm_trace.probes.nvml_backend import ENV_SCENARIO, NvmlBackend

GiB = 1 << 30
MiB = 1 << 20

# --- constants (values as in pynvml / nvml.h) ---------------------------------------------------
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_UNKNOWN = 999

NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_TEMPERATURE_GPU = 0
NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
nvmlMemory_v2 = 0x02000028

nvmlEventTypeSingleBitEccError = 0x0000000000000001
nvmlEventTypeDoubleBitEccError = 0x0000000000000002
nvmlEventTypePState = 0x0000000000000004
nvmlEventTypeXidCriticalError = 0x0000000000000008
nvmlEventTypeClock = 0x0000000000000010
nvmlEventTypeNone = 0

nvmlClocksEventReasonGpuIdle = 0x0000000000000001
nvmlClocksEventReasonApplicationsClocksSetting = 0x0000000000000002
nvmlClocksEventReasonSwPowerCap = 0x0000000000000004
nvmlClocksEventReasonHwSlowdown = 0x0000000000000008
nvmlClocksEventReasonSyncBoost = 0x0000000000000010
nvmlClocksEventReasonSwThermalSlowdown = 0x0000000000000020
nvmlClocksEventReasonHwThermalSlowdown = 0x0000000000000040
nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x0000000000000080
nvmlClocksEventReasonDisplayClockSetting = 0x0000000000000100
nvmlClocksEventReasonNone = 0

_REASON_BITS = {
    "GpuIdle": nvmlClocksEventReasonGpuIdle,
    "ApplicationsClocksSetting": nvmlClocksEventReasonApplicationsClocksSetting,
    "SwPowerCap": nvmlClocksEventReasonSwPowerCap,
    "HwSlowdown": nvmlClocksEventReasonHwSlowdown,
    "SyncBoost": nvmlClocksEventReasonSyncBoost,
    "SwThermalSlowdown": nvmlClocksEventReasonSwThermalSlowdown,
    "HwThermalSlowdown": nvmlClocksEventReasonHwThermalSlowdown,
    "HwPowerBrakeSlowdown": nvmlClocksEventReasonHwPowerBrakeSlowdown,
    "DisplayClockSetting": nvmlClocksEventReasonDisplayClockSetting,
}

_ERROR_STRINGS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH: "Argument Version Mismatch",
    NVML_ERROR_GPU_NOT_FOUND: "GPU Not Found",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """As pynvml's: ``.value`` is the nvmlReturn_t code, ``str()`` its text."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _ERROR_STRINGS.get(self.value, f"NVML Error with code {self.value}")


def nvmlErrorString(result: int) -> str:
    return _ERROR_STRINGS.get(result, f"NVML Error with code {result}")


class _Obj:
    """Attribute bag standing in for pynvml's ctypes structs and friendly objects."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__dict__})"


class c_nvmlMemory_t(_Obj):  # noqa: N801 - pynvml's name
    pass


class c_nvmlMemory_v2_t(_Obj):  # noqa: N801
    pass


class c_nvmlUtilization_t(_Obj):  # noqa: N801
    pass


class nvmlPciInfo_t(_Obj):  # noqa: N801
    pass


class nvmlFriendlyObject(_Obj):  # noqa: N801
    pass


class c_nvmlProcessUtilizationSample_t(_Obj):  # noqa: N801
    pass


class c_nvmlEventData_t(_Obj):  # noqa: N801
    pass


class SimDevice:
    """The handle (pynvml returns a ctypes pointer; here it is this object)."""

    def __init__(self, index: int, spec: dict[str, Any]) -> None:
        self.index = index
        self.spec = spec

    def __repr__(self) -> str:
        return f"<simulated GPU {self.index}>"


# --- scenarios ------------------------------------------------------------------------------------
_DEVICE_DEFAULTS: dict[str, Any] = {
    "name": "NVIDIA H100 80GB HBM3 (simulated)",
    "uuid": None,  # derived from the index when null
    "pci_bus_id": None,
    "memory_total": 80 * GiB,
    "memory_reserved": 512 * MiB,
    "memory_v2": True,
    "weights_bytes": 30 * GiB,
    "kv_growth_bytes_per_s": 256 * MiB,
    "kv_start_s": 1.0,
    "kv_cap_bytes": 20 * GiB,  # null: grows until the device is full
    "util_base_pct": 70.0,
    "util_swing_pct": 25.0,
    "util_period_s": 10.0,
    "sm_clock_mhz": 1980,
    "throttle_sm_clock_mhz": 1410,
    "mem_clock_mhz": 2619,
    "power_idle_mw": 90_000,
    "power_per_util_mw": 5_500,
    "power_limit_mw": 700_000,
    "temp_base_c": 36,
    "pcie_tx_kbps": 1_200_000,
    "pcie_rx_kbps": 4_800_000,
    "pcie_block_ms": 20,  # nvmlDeviceGetPcieThroughput measures over 20 ms: it blocks that long
    "ecc_corrected_per_min": 1.0,
    "ecc_uncorrected": 0,
    "throttle": [],  # [{"start_s", "end_s", "reasons": ["SwPowerCap", ...]}]
    "xid": [],  # [{"at_s", "xid"}]
    "unsupported": [],  # NVML function names raising NOT_SUPPORTED
    "errors": [],  # [{"fn", "start_s", "end_s", "code"}]
    "lost_at_s": None,
    "main_pid": None,  # the model process; null: the target's root (set_target) or a fake pid
    "main_share": 1.0,  # fraction of weights + KV cache charged to the model process
    "foreign": [],  # [{"pid", "used_bytes"}]: other tenants of the GPU
    "supported_events": nvmlEventTypeXidCriticalError
    | nvmlEventTypeSingleBitEccError
    | nvmlEventTypeDoubleBitEccError
    | nvmlEventTypePState
    | nvmlEventTypeClock,
}

DEFAULT_SCENARIO: dict[str, Any] = {
    "library": True,
    "driver_loaded": True,
    "driver_version": "550.54.15",
    "nvml_version": "12.550.54.15",
    "devices": [
        {
            # The serving GPU: KV cache grows with load (to a plateau 20 GiB above the weights),
            # a power-cap window and a hardware slowdown, an Xid 31 (MMU fault) at 6 s.
            "throttle": [
                {"start_s": 3.0, "end_s": 5.0, "reasons": ["SwPowerCap"]},
                {"start_s": 8.0, "end_s": 9.0, "reasons": ["HwSlowdown", "SwPowerCap"]},
            ],
            "xid": [{"at_s": 6.0, "xid": 31}],
            "foreign": [{"pid": 424242, "used_bytes": 1 * GiB}],
        },
        {
            # A smaller, older card: no PCIe counters, no per-process utilisation, no v2
            # memory info (old driver), idle.
            "name": "NVIDIA L4 (simulated)",
            "memory_total": 24 * GiB,
            "memory_reserved": 0,
            "memory_v2": False,
            "weights_bytes": 0,
            "kv_growth_bytes_per_s": 0,
            "util_base_pct": 0.0,
            "util_swing_pct": 0.0,
            "sm_clock_mhz": 2040,
            "mem_clock_mhz": 6251,
            "power_idle_mw": 16_000,
            "power_limit_mw": 72_000,
            "ecc_corrected_per_min": 0.0,
            "unsupported": ["nvmlDeviceGetPcieThroughput", "nvmlDeviceGetProcessUtilization"],
            "main_pid": 0,  # 0: no model process on this card
        },
    ],
}

# The CUDA out-of-memory picture: one GPU, the KV cache grows at 2 GiB/s until the device is full.
OOM_SCENARIO: dict[str, Any] = {
    "devices": [
        {
            "memory_total": 40 * GiB,
            "weights_bytes": 16 * GiB,
            "kv_growth_bytes_per_s": 2 * GiB,
            "kv_start_s": 0.5,
            "kv_cap_bytes": None,
        }
    ]
}

BUILTIN_SCENARIOS = {"default": DEFAULT_SCENARIO, "oom": OOM_SCENARIO}


def load_scenario(spec: str | dict[str, Any] | None) -> dict[str, Any]:
    """A scenario from a dict, a built-in name (default, oom) or a JSON file's path."""
    if spec is None or spec == "":
        spec = "default"
    if isinstance(spec, str):
        if spec in BUILTIN_SCENARIOS:
            raw = copy.deepcopy(BUILTIN_SCENARIOS[spec])
        else:
            with open(spec, encoding="utf-8") as f:
                raw = json.load(f)
    else:
        raw = copy.deepcopy(spec)
    top = {k: v for k, v in DEFAULT_SCENARIO.items() if k != "devices"}
    top.update({k: v for k, v in raw.items() if k != "devices"})
    devices = raw.get("devices", DEFAULT_SCENARIO["devices"])
    top["devices"] = []
    for i, d in enumerate(devices):
        full = copy.deepcopy(_DEVICE_DEFAULTS)
        full.update(d)
        if full["uuid"] is None:
            full["uuid"] = f"GPU-5133d000-0000-4000-8000-{i:012x}"
        if full["pci_bus_id"] is None:
            full["pci_bus_id"] = f"00000000:{0x17 + 0x20 * i:02X}:00.0"
        top["devices"].append(full)
    return top


def _env_pids() -> list[int]:
    raw = os.environ.get("AUTOGLM_TRACE_NVML_SIM_PIDS", "")
    return [int(p) for p in raw.replace(",", " ").split() if p.strip().isdigit()]


class SimulatedNvml(NvmlBackend):
    """One simulated driver. Pass it wherever the ``pynvml`` module would go; it is an NvmlBackend
    (probes/nvml_backend.py) like the real one."""

    backend_kind = "simulated"
    backend_notice = " [SIMULATED backend: AUTOGLM_TRACE_NVML=simulated, a testing aid]"

    NVMLError = NVMLError
    FAKE_MAIN_PID = 31337

    def __init__(
        self,
        scenario: str | dict[str, Any] | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        label: str = "default",
    ) -> None:
        self.scenario = load_scenario(scenario)
        self.label = label  # the scenario's name, for the manifest
        self.clock = clock
        self.t0_ns = clock()
        self._init_count = 0
        self._lock = threading.Lock()
        self._target_fn: Callable[[], list[int]] | None = None
        self.devices = [SimDevice(i, d) for i, d in enumerate(self.scenario["devices"])]
        self._event_sets: list[dict[str, Any]] = []
        self.calls = 0  # every NVML call served (the benchmark counts these)

    # The NvmlBackend interface ---------------------------------------------------------------------
    def set_target(self, pids_fn: Callable[[], list[int]] | None) -> None:
        """Report the target's first pid (its root) as each GPU's model process."""
        self._target_fn = pids_fn

    sim_set_target = set_target  # the name tests and benchmarks rebuilding a run use

    def backend_info(self) -> dict[str, Any]:
        # What a test needs to recompute what the simulation served (a testing aid only).
        return {"simulation": {"t0_ns": self.t0_ns, "scenario": self.label}}

    def now_s(self) -> float:
        return (self.clock() - self.t0_ns) / 1e9

    def main_pid(self, index: int) -> int:
        spec = self.devices[index].spec
        if spec["main_pid"] is not None:
            return int(spec["main_pid"])
        if self._target_fn is not None:
            try:
                pids = list(self._target_fn())
            except Exception:  # noqa: BLE001 - a hook must never break the sim
                pids = []
            if pids:
                return int(pids[0])
        env = _env_pids()
        if env:
            return env[0]
        return self.FAKE_MAIN_PID

    def device_state(self, index: int, t: float) -> dict[str, Any]:
        """What the device serves at ``t`` seconds after the simulation started, named by the
        ``gpu_devices`` columns (plus ``processes``: [(pid, used_bytes)] and ``lost``)."""
        d = self.devices[index].spec
        total = int(d["memory_total"])
        reserved = int(d["memory_reserved"])
        capacity = total - reserved
        foreign = sum(int(p["used_bytes"]) for p in d["foreign"])
        kv = max(0.0, t - float(d["kv_start_s"])) * float(d["kv_growth_bytes_per_s"])
        cap = d["kv_cap_bytes"]
        kv_cap = capacity - foreign - int(d["weights_bytes"]) if cap is None else int(cap)
        kv = int(min(kv, max(0, kv_cap)))
        model = int(d["weights_bytes"]) + kv
        used = min(capacity, model + foreign)
        period = float(d["util_period_s"]) or 1.0
        util = float(d["util_base_pct"]) + float(d["util_swing_pct"]) * math.sin(2 * math.pi * t / period)
        util_gpu = int(round(min(100.0, max(0.0, util))))
        reasons = 0
        for w in d["throttle"]:
            if float(w["start_s"]) <= t < float(w["end_s"]):
                for r in w["reasons"]:
                    reasons |= _REASON_BITS[r]
        if util_gpu == 0:
            reasons |= nvmlClocksEventReasonGpuIdle
        throttled = reasons & ~nvmlClocksEventReasonGpuIdle
        limit = int(d["power_limit_mw"])
        power = int(d["power_idle_mw"]) + int(d["power_per_util_mw"]) * util_gpu
        if reasons & nvmlClocksEventReasonSwPowerCap:
            power = max(power, limit)
        power = min(power, limit)
        avg_power = int(d["power_idle_mw"]) + int(d["power_per_util_mw"]) * float(d["util_base_pct"])
        main = self.main_pid(index)
        procs = []
        if main:
            procs.append((main, int(model * float(d["main_share"]))))
        procs += [(int(p["pid"]), int(p["used_bytes"])) for p in d["foreign"]]
        return {
            "mem_total_bytes": total,
            "mem_used_bytes": used,
            "mem_free_bytes": capacity - used,
            "mem_reserved_bytes": reserved,
            "util_gpu_pct": util_gpu,
            "util_mem_pct": int(round(util_gpu * 0.6)),
            "sm_clock_mhz": int(d["throttle_sm_clock_mhz"] if throttled else d["sm_clock_mhz"]),
            "mem_clock_mhz": int(d["mem_clock_mhz"]),
            "power_mw": power,
            "power_limit_mw": limit,
            "energy_mj": int(avg_power * max(0.0, t)),  # mW * s = mJ
            "temp_c": int(d["temp_base_c"]) + util_gpu // 4,
            "clocks_event_reasons": reasons,
            "pcie_tx_kbps": int(int(d["pcie_tx_kbps"]) * util_gpu / 100) if util_gpu else 0,
            "pcie_rx_kbps": int(int(d["pcie_rx_kbps"]) * util_gpu / 100) if util_gpu else 0,
            "ecc_corrected": int(max(0.0, t) / 60.0 * float(d["ecc_corrected_per_min"])),
            "ecc_uncorrected": int(d["ecc_uncorrected"]),
            "processes": procs,
            "lost": d["lost_at_s"] is not None and t >= float(d["lost_at_s"]),
        }

    # plumbing ----------------------------------------------------------------------------------
    def _check_init(self) -> None:
        self.calls += 1
        if self._init_count <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def _dev(self, handle: Any, fn: str) -> tuple[SimDevice, float]:
        """Validate a handle for ``fn`` and return it with the current sim time."""
        self._check_init()
        if not isinstance(handle, SimDevice) or handle not in self.devices:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        t = self.now_s()
        spec = handle.spec
        if spec["lost_at_s"] is not None and t >= float(spec["lost_at_s"]):
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if fn in spec["unsupported"]:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        for e in spec["errors"]:
            if e["fn"] == fn and float(e.get("start_s", 0)) <= t < float(e.get("end_s", math.inf)):
                raise NVMLError(int(e.get("code", NVML_ERROR_UNKNOWN)))
        return handle, t

    def _state(self, handle: Any, fn: str) -> dict[str, Any]:
        dev, t = self._dev(handle, fn)
        return self.device_state(dev.index, t)

    # library -------------------------------------------------------------------------------------
    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        self.nvmlInitWithFlags(0)

    def nvmlInitWithFlags(self, flags: int) -> None:  # noqa: N802
        self.calls += 1
        if not self.scenario["library"]:
            raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        if not self.scenario["driver_loaded"]:
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        with self._lock:
            self._init_count += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._check_init()
        with self._lock:
            self._init_count -= 1

    def nvmlErrorString(self, result: int) -> str:  # noqa: N802
        return nvmlErrorString(result)

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        self._check_init()
        return str(self.scenario["driver_version"])

    def nvmlSystemGetNVMLVersion(self) -> str:  # noqa: N802
        self._check_init()
        return str(self.scenario["nvml_version"])

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._check_init()
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimDevice:  # noqa: N802
        self._check_init()
        if not 0 <= index < len(self.devices):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        dev = self.devices[index]
        lost = dev.spec["lost_at_s"]
        if lost is not None and self.now_s() >= float(lost):
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return dev

    def nvmlDeviceGetIndex(self, handle: Any) -> int:  # noqa: N802
        dev, _ = self._dev(handle, "nvmlDeviceGetIndex")
        return dev.index

    # identity ------------------------------------------------------------------------------------
    def nvmlDeviceGetName(self, handle: Any) -> str:  # noqa: N802
        dev, _ = self._dev(handle, "nvmlDeviceGetName")
        return str(dev.spec["name"])

    def nvmlDeviceGetUUID(self, handle: Any) -> str:  # noqa: N802
        dev, _ = self._dev(handle, "nvmlDeviceGetUUID")
        return str(dev.spec["uuid"])

    def nvmlDeviceGetPciInfo(self, handle: Any) -> nvmlPciInfo_t:  # noqa: N802
        dev, _ = self._dev(handle, "nvmlDeviceGetPciInfo")
        bus = str(dev.spec["pci_bus_id"])
        # ctypes char arrays read back as bytes.
        return nvmlPciInfo_t(busId=bus.encode(), busIdLegacy=bus.encode(), domain=0, bus=int(bus.split(":")[1], 16), device=0)

    # sampled values ------------------------------------------------------------------------------
    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:  # noqa: N802
        if version:
            dev, t = self._dev(handle, "nvmlDeviceGetMemoryInfo_v2")
            if not dev.spec["memory_v2"]:
                raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
            if version != nvmlMemory_v2:
                raise NVMLError(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
            s = self.device_state(dev.index, t)
            return c_nvmlMemory_v2_t(
                version=version,
                total=s["mem_total_bytes"],
                reserved=s["mem_reserved_bytes"],
                free=s["mem_free_bytes"],
                used=s["mem_used_bytes"],
            )
        s = self._state(handle, "nvmlDeviceGetMemoryInfo")
        # v1: "used" counts the driver-reserved memory too.
        return c_nvmlMemory_t(
            total=s["mem_total_bytes"],
            free=s["mem_free_bytes"],
            used=s["mem_used_bytes"] + s["mem_reserved_bytes"],
        )

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> c_nvmlUtilization_t:  # noqa: N802
        s = self._state(handle, "nvmlDeviceGetUtilizationRates")
        return c_nvmlUtilization_t(gpu=s["util_gpu_pct"], memory=s["util_mem_pct"])

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:  # noqa: N802, A002
        s = self._state(handle, "nvmlDeviceGetClockInfo")
        if type in (NVML_CLOCK_SM, NVML_CLOCK_GRAPHICS):
            return s["sm_clock_mhz"]
        if type == NVML_CLOCK_MEM:
            return s["mem_clock_mhz"]
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:  # noqa: N802
        return self._state(handle, "nvmlDeviceGetPowerUsage")["power_mw"]

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:  # noqa: N802
        return self._state(handle, "nvmlDeviceGetEnforcedPowerLimit")["power_limit_mw"]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:  # noqa: N802
        return self._state(handle, "nvmlDeviceGetTotalEnergyConsumption")["energy_mj"]

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:  # noqa: N802
        s = self._state(handle, "nvmlDeviceGetTemperature")
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return s["temp_c"]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:  # noqa: N802
        return self._state(handle, "nvmlDeviceGetCurrentClocksEventReasons")["clocks_event_reasons"]

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:  # noqa: N802
        """The deprecated name of the same call (nvidia-ml-py before 12.535 only has this one)."""
        return self._state(handle, "nvmlDeviceGetCurrentClocksThrottleReasons")["clocks_event_reasons"]

    def nvmlDeviceGetPcieThroughput(self, device: Any, counter: int) -> int:  # noqa: N802
        s = self._state(device, "nvmlDeviceGetPcieThroughput")
        block = float(device.spec["pcie_block_ms"])
        if block > 0:
            time.sleep(block / 1000.0)  # real time, as the driver's measurement window
        if counter == NVML_PCIE_UTIL_TX_BYTES:
            return s["pcie_tx_kbps"]
        if counter == NVML_PCIE_UTIL_RX_BYTES:
            return s["pcie_rx_kbps"]
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int, counterType: int) -> int:  # noqa: N802, N803
        s = self._state(handle, "nvmlDeviceGetTotalEccErrors")
        if errorType == NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return s["ecc_corrected"]
        return s["ecc_uncorrected"]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[nvmlFriendlyObject]:  # noqa: N802
        s = self._state(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [
            nvmlFriendlyObject(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
            for pid, used in s["processes"]
        ]

    # The driver takes a utilisation sample per process about every 1/6 s.
    PROC_UTIL_PERIOD_US = 166_666

    def nvmlDeviceGetProcessUtilization(self, handle: Any, timeStamp: int) -> list[Any]:  # noqa: N802, N803
        dev, t = self._dev(handle, "nvmlDeviceGetProcessUtilization")
        s = self.device_state(dev.index, t)
        # Sample timestamps in microseconds, quantised to the driver's sampling period.
        ts_us = (self.clock() // 1000) // self.PROC_UTIL_PERIOD_US * self.PROC_UTIL_PERIOD_US
        if ts_us <= timeStamp or not s["processes"]:
            raise NVMLError(NVML_ERROR_NOT_FOUND)  # nothing newer than timeStamp
        out = []
        for k, (pid, _used) in enumerate(s["processes"]):
            sm = self.proc_sm_util(s["util_gpu_pct"], k)
            out.append(
                c_nvmlProcessUtilizationSample_t(
                    pid=pid, timeStamp=ts_us, smUtil=sm, memUtil=int(sm * 0.6), encUtil=0, decUtil=0
                )
            )
        return out

    @staticmethod
    def proc_sm_util(util_gpu: int, k: int) -> int:
        """SM utilisation served for the k-th process of a device (the model process gets most)."""
        return int(util_gpu * 0.9) if k == 0 else min(2, util_gpu)

    # events --------------------------------------------------------------------------------------
    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int:  # noqa: N802
        dev, _ = self._dev(handle, "nvmlDeviceGetSupportedEventTypes")
        return int(dev.spec["supported_events"])

    def nvmlEventSetCreate(self) -> dict[str, Any]:  # noqa: N802
        self._check_init()
        es = {"registered": {}, "delivered": set(), "freed": False}
        self._event_sets.append(es)
        return es

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: dict[str, Any]) -> None:  # noqa: N802, N803
        dev, _ = self._dev(handle, "nvmlDeviceRegisterEvents")
        if eventTypes & ~int(dev.spec["supported_events"]):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        eventSet["registered"][dev.index] = eventSet["registered"].get(dev.index, 0) | eventTypes

    def _due_event(self, es: dict[str, Any]) -> c_nvmlEventData_t | None:
        t = self.now_s()
        due = []
        for idx, mask in es["registered"].items():
            spec = self.devices[idx].spec
            if mask & nvmlEventTypeXidCriticalError:
                xids = [(float(x["at_s"]), int(x["xid"])) for x in spec["xid"]]
                if spec["lost_at_s"] is not None:
                    xids.append((float(spec["lost_at_s"]), 79))  # "GPU has fallen off the bus"
                for at, xid in xids:
                    key = (idx, at, xid)
                    if at <= t and key not in es["delivered"]:
                        due.append((at, key))
        if not due:
            return None
        due.sort()
        key = due[0][1]
        es["delivered"].add(key)
        return c_nvmlEventData_t(
            device=self.devices[key[0]],
            eventType=nvmlEventTypeXidCriticalError,
            eventData=key[2],
            gpuInstanceId=0xFFFFFFFF,
            computeInstanceId=0xFFFFFFFF,
        )

    def nvmlEventSetWait_v2(self, eventSet: dict[str, Any], timeoutms: int) -> c_nvmlEventData_t:  # noqa: N802, N803
        """Blocks up to ``timeoutms`` of real time for an event due on the sim clock."""
        self._check_init()
        deadline = time.monotonic() + timeoutms / 1000.0
        while True:
            if eventSet["freed"]:
                raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
            with self._lock:
                ev = self._due_event(eventSet)
            if ev is not None:
                return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise NVMLError(NVML_ERROR_TIMEOUT)
            time.sleep(min(0.02, left))  # polls the sim clock; the real call blocks in the driver

    def nvmlEventSetWait(self, eventSet: dict[str, Any], timeoutms: int) -> c_nvmlEventData_t:  # noqa: N802, N803
        return self.nvmlEventSetWait_v2(eventSet, timeoutms)

    def nvmlEventSetFree(self, eventSet: dict[str, Any]) -> None:  # noqa: N802, N803
        self._check_init()
        eventSet["freed"] = True


# Expose the constants and the error class on instances too (``nvml.NVML_ERROR_NOT_SUPPORTED``),
# as they are on the pynvml module.
for _name, _value in list(globals().items()):
    if _name.startswith(("NVML_", "nvmlEventType", "nvmlClocksEventReason")) or _name in (
        "nvmlMemory_v2",
        "c_nvmlMemory_t",
        "c_nvmlMemory_v2_t",
    ):
        setattr(SimulatedNvml, _name, _value)


def from_env(clock: Callable[[], int] = time.monotonic_ns) -> SimulatedNvml:
    """The simulated backend as ``AUTOGLM_TRACE_NVML_SCENARIO`` (built-in name or JSON path) asks."""
    name = os.environ.get(ENV_SCENARIO) or None
    return SimulatedNvml(name, clock=clock, label=name or "default")
