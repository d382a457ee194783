"""Signals derived from raw recorded rows: the one derivation every view uses.

``top`` (tracer/live_view.py), ``/metrics`` (tracer/exporter.py), the flight recorder's triggers
(tracer/flight/) and the analysis and HTML report (analysis/) all turn the same raw rows into numbers;
each rule below exists once, here, so they cannot disagree on a number.

Why in the root package: the module needs only numpy, pyarrow and two facts of the recording
contract (the log2 bucket layout of the kernel histograms, the NVML clocks-event bits stored in
``gpu_devices.clocks_event_reasons``), and every room needs it -- analysis, the recorder's live
view, exporter and triggers, and probes/nvml.py for the bit names. Kept in analysis/ it would make
the recorder and the probes import the analysis room. It imports nothing of tracer/, probes/ or
analysis/ (tests/unit/test_import_direction.py).

The rules:

* **Null** -- a null reading is a missing value. Read as a float it is NaN (skip it with nan-aware
  numpy); read as an integer it is 0; a boolean column reads as bool with null as False. A caller that
  means something else says so with ``fill`` (e.g. ``fill=0`` where a missing count adds nothing).
* **Counter resets** -- a cumulative counter that goes down was reset (a new process under a reused
  pid, a restarted engine); the increase across the reset is the new value, i.e. the new series
  counted from zero. This is Prometheus' ``rate()`` / ``increase()`` rule, so a rate computed here
  equals PromQL's over the exported counters. Null samples are skipped (the next sample is differenced
  against the last non-null one), as a missed scrape is.
* **Log2 histograms** -- bucket i counts values v (microseconds) with 2**(i-1) <= v < 2**i, bucket 0
  counts v < 1 (probes/bpf/common.h ``log2_slot``). Rows are decoded with short lists padded, long
  lists cut at ``LOG2_BUCKETS`` and null lists as zeros.
* **Quantiles** -- Prometheus' ``histogram_quantile``: find the bucket holding rank q * total and
  interpolate linearly between its lower and upper bound (the first bucket's lower bound is 0). Log2
  buckets past ``LOG2_FINITE`` (2**25 us, 33.5 s) are one open-ended bucket, exactly as ``/metrics``
  exposes them (``+Inf``); a quantile that falls there reads as 33.5 s, as PromQL would say.
* **Units** -- bytes in binary units (KiB, MiB ...), seconds as us / ms / s; sizes and durations
  parsed from the same suffix tables everywhere.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace.schema import LOG2_BUCKETS

NS = 1_000_000_000

# ------------------------------------------------------------------------------------------------
# Columns
# ------------------------------------------------------------------------------------------------
Columnar = pa.Array | pa.ChunkedArray


def values(arr: Columnar, dtype: Any = np.float64, fill: Any = None) -> np.ndarray:
    """An Arrow array as numpy under the null rule (module docstring): float -> NaN, integer -> 0,
    boolean columns -> bool with null False; ``fill`` replaces nulls with a value of the caller's."""
    dt = np.dtype(dtype)
    if pa.types.is_boolean(arr.type):
        out = pc.fill_null(arr, bool(fill) if fill is not None else False).to_numpy(zero_copy_only=False)
        return out.astype(dt, copy=False) if np.issubdtype(dt, np.integer) else out.astype(bool, copy=False)
    if np.issubdtype(dt, np.floating):
        if not arr.null_count:
            return arr.to_numpy(zero_copy_only=False).astype(dt, copy=False)
        if not pa.types.is_floating(arr.type):
            arr = arr.cast(pa.float64())
        if fill is not None and arr.null_count:
            arr = pc.fill_null(arr, float(fill))
        return arr.to_numpy(zero_copy_only=False).astype(dt, copy=False)
    if arr.null_count:
        arr = pc.fill_null(arr, 0 if fill is None else fill)
    return arr.to_numpy(zero_copy_only=False).astype(dt, copy=False)


def column(table: pa.Table | pa.RecordBatch, name: str, dtype: Any = np.float64, fill: Any = None) -> np.ndarray:
    """``values`` of a table's column."""
    return values(table.column(name), dtype, fill)


# ------------------------------------------------------------------------------------------------
# Counters
# ------------------------------------------------------------------------------------------------
def counter_step(prev: np.ndarray | float, cur: np.ndarray | float) -> np.ndarray:
    """The increase from ``prev`` to ``cur`` of a cumulative counter: ``cur - prev``, or ``cur`` when
    the counter went down (a reset). NaN where either reading is missing."""
    p, c = np.asarray(prev, dtype=np.float64), np.asarray(cur, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(c >= p, c - p, np.where(np.isfinite(p), c, np.nan))


def counter_increases(ts: np.ndarray, value: np.ndarray, key: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Successive samples of a cumulative counter per key (pid, core): returns (ts of the later
    sample, time since the earlier one in ns, increase, key). Null (NaN) samples are skipped; a
    decrease is a reset (``counter_step``)."""
    ts = np.asarray(ts, dtype=np.int64)
    v = np.asarray(value, dtype=np.float64)
    k = np.zeros(ts.shape, dtype=np.int64) if key is None else np.asarray(key)
    ok = np.isfinite(v)
    ts, v, k = ts[ok], v[ok], k[ok]
    if ts.size < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), k[:0]
    order = np.lexsort((ts, k))
    ts, v, k = ts[order], v[order], k[order]
    same = k[1:] == k[:-1]
    inc = counter_step(v[:-1], v[1:])
    return ts[1:][same], (ts[1:] - ts[:-1])[same], inc[same], k[1:][same]


def counter_rate(ts: np.ndarray, value: np.ndarray, key: np.ndarray | None = None, scale: float = 1.0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-second rates of a cumulative counter per key: (ts of the later sample, rate * ``scale``,
    key), one per pair of successive samples with time between them."""
    t, dt, inc, k = counter_increases(ts, value, key)
    ok = dt > 0
    return t[ok], inc[ok] * (NS * scale) / dt[ok], k[ok]


def window_rate(ts: np.ndarray, value: np.ndarray, key: np.ndarray | None = None) -> float | None:
    """One rate (per second) over a window: per key, the counter's increase divided by the time its
    samples cover, summed over keys. None when no key has two samples."""
    _, dt, inc, k = counter_increases(ts, value, key)
    if k.size == 0:
        return None
    uk, inv = np.unique(k, return_inverse=True)
    inc_k = np.bincount(inv.reshape(-1), weights=inc, minlength=uk.size)
    dt_k = np.bincount(inv.reshape(-1), weights=dt.astype(np.float64), minlength=uk.size)
    ok = dt_k > 0
    if not ok.any():
        return None
    return float((inc_k[ok] / dt_k[ok]).sum() * NS)


# ------------------------------------------------------------------------------------------------
# Log2 histograms and quantiles
# ------------------------------------------------------------------------------------------------
# Buckets with a finite upper bound as exposed on /metrics (le = 2**i us); the rest are one +Inf bucket.
LOG2_FINITE = 26
LOG2_LE_S: list[float] = [(2.0**i) * 1e-6 for i in range(LOG2_FINITE)]


def _log2_chunk(c: pa.Array) -> np.ndarray:
    n = len(c)
    out = np.zeros((n, LOG2_BUCKETS), dtype=np.float64)
    if n == 0:
        return out
    lens = values(pc.list_value_length(c), np.int64)
    flat = pc.list_flatten(c).to_numpy(zero_copy_only=False).astype(np.float64)
    if (lens == LOG2_BUCKETS).all():  # the usual case: one reshape
        return flat.reshape(n, LOG2_BUCKETS)
    rows = np.repeat(np.arange(n), lens)
    pos = np.arange(flat.size) - np.repeat(np.cumsum(lens) - lens, lens)
    keep = pos < LOG2_BUCKETS
    np.add.at(out, (rows[keep], pos[keep]), flat[keep])
    return out


def log2_rows(arr: Columnar) -> np.ndarray:
    """A list<uint32> column of log2 histograms as an (n, LOG2_BUCKETS) float array."""
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    parts = [_log2_chunk(c) for c in chunks if len(c)]
    return np.concatenate(parts) if parts else np.zeros((0, LOG2_BUCKETS))


def log2_sum(arr: Columnar) -> np.ndarray:
    """The sum of a log2 histogram column over its rows (LOG2_BUCKETS counts)."""
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    out = np.zeros(LOG2_BUCKETS)
    for c in chunks:
        if len(c):
            out += _log2_chunk(c).sum(axis=0)
    return out


def fold_log2(hist: np.ndarray) -> np.ndarray:
    """(..., LOG2_BUCKETS) -> (..., LOG2_FINITE + 1): the buckets past the finite ones summed into the
    last (+Inf) one, as /metrics exposes them."""
    h = np.asarray(hist, dtype=np.float64)
    return np.concatenate([h[..., :LOG2_FINITE], h[..., LOG2_FINITE:].sum(axis=-1, keepdims=True)], axis=-1)


def bucket_quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float | None:
    """Prometheus' ``histogram_quantile``: ``bounds`` the ascending upper bounds (the last may be
    +Inf), ``cumulative`` the cumulative counts. None without observations."""
    if not len(cumulative) or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    i = min(bisect.bisect_left(list(cumulative), rank), len(cumulative) - 1)
    if math.isinf(bounds[i]):
        # The rank is in the +Inf bucket: the best estimate is the highest finite bound.
        return bounds[i - 1] if i > 0 else None
    lower = bounds[i - 1] if i > 0 else 0.0
    below = cumulative[i - 1] if i > 0 else 0.0
    in_bucket = cumulative[i] - below
    if in_bucket <= 0:
        return bounds[i]
    return lower + (bounds[i] - lower) * (rank - below) / in_bucket


def log2_quantile(hist: np.ndarray, q: float) -> float | None:
    """Quantile in seconds of a log2 microsecond histogram (per-bucket counts), by ``bucket_quantile``
    over the buckets /metrics exposes. None when the histogram is empty."""
    h = np.asarray(hist, dtype=np.float64)
    if h.size > LOG2_FINITE:
        h = fold_log2(h)
        bounds = [*LOG2_LE_S, math.inf]
    else:
        bounds = LOG2_LE_S[: h.size]
    return bucket_quantile(q, bounds, np.cumsum(h).tolist())


# ------------------------------------------------------------------------------------------------
# NVML clocks-event (throttle) reasons
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClockEvent:
    bit: int
    nvml: str  # nvml.h nvmlClocksEventReason<name>
    key: str  # the /metrics label value
    label: str  # for people
    throttle: bool  # the GPU slowed itself (idle and clock settings are not throttling)


CLOCK_EVENTS: tuple[ClockEvent, ...] = (
    ClockEvent(0x1, "GpuIdle", "gpu_idle", "GPU idle", False),
    ClockEvent(0x2, "ApplicationsClocksSetting", "applications_clocks", "application clocks", False),
    ClockEvent(0x4, "SwPowerCap", "sw_power_cap", "SW power cap", True),
    ClockEvent(0x8, "HwSlowdown", "hw_slowdown", "HW slowdown", True),
    ClockEvent(0x10, "SyncBoost", "sync_boost", "sync boost", False),
    ClockEvent(0x20, "SwThermalSlowdown", "sw_thermal", "SW thermal", True),
    ClockEvent(0x40, "HwThermalSlowdown", "hw_thermal", "HW thermal", True),
    ClockEvent(0x80, "HwPowerBrakeSlowdown", "hw_power_brake", "HW power brake", True),
    ClockEvent(0x100, "DisplayClockSetting", "display_clocks", "display clocks", False),
)
THROTTLE_EVENTS = tuple(e for e in CLOCK_EVENTS if e.throttle)
THROTTLE_MASK = sum(e.bit for e in THROTTLE_EVENTS)


def throttle_labels(mask: int | None) -> list[str]:
    """The throttling reasons set in a clocks-event mask, for people ('SW power cap', ...)."""
    return [e.label for e in THROTTLE_EVENTS if mask and mask & e.bit]


# ------------------------------------------------------------------------------------------------
# Units
# ------------------------------------------------------------------------------------------------
def human_bytes(n: float | None, missing: str = "-") -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 12.0 GiB (``missing`` for None / NaN)."""
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return missing
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(v: float | None) -> str:
    """Seconds as a short duration: 850 us, 12.3 ms, 1.25 s ('-' when unknown)."""
    if v is None or not np.isfinite(v):
        return "-"
    if v < 1e-3:
        return f"{v * 1e6:.0f} us"
    if v < 1:
        return f"{v * 1e3:.1f} ms"
    return f"{v:.2f} s"


DURATION_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "": 1.0}
SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2,
              "mib": 1 << 20, "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30, "t": 1 << 40, "tb": 1000**4,
              "tib": 1 << 40}
_NUMBER_UNIT = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")


def parse_duration(text: str) -> float:
    """'5m', '30s', '1.5h', '500ms', '90' (seconds) -> seconds."""
    m = _NUMBER_UNIT.fullmatch(str(text))
    if not m or m.group(2).lower() not in DURATION_UNITS:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 5m, 1h)")
    return float(m.group(1)) * DURATION_UNITS[m.group(2).lower()]


def parse_size(text: str) -> int:
    """'256M', '1G', '512MiB', '10GB', '4096' (bytes) -> bytes (K/M/G are binary, KB/MB/GB decimal)."""
    m = _NUMBER_UNIT.fullmatch(str(text))
    if not m or m.group(2).lower() not in SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 256M, 2G, 500MB)")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2).lower()])
