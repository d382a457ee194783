"""Time series ("tracks") derived from a recording, for plots, the Perfetto export and the analysis.

The recording stores raw data: cumulative counters (``proc_samples``, ``host_samples``,
``host_cpu``), per-bucket aggregates (``sched``, ``faults``, ``block_io``) and gauges
(``gpu_devices``). This module turns them into ``Track``s -- one named series each, on the
recording's monotonic clock -- with numpy/pyarrow only (no Python loop per row):

* counters become rates by differencing per key (pid, core), with the reset and null rules of
  autoglm_trace/signals.py (the one rate primitive every view uses);
* bucketed tables are summed per bucket over the target's threads;
* samples of several processes are put on one grid (the sampling interval) before summing, so a
  sampler that stamps each process a few microseconds apart still adds up correctly;
* everything is downsampled to at most ``max_points`` points per track for plotting, keeping each
  bin's maximum for spiky series (waits, latency) so a 50 ms stall survives a 2-hour recording.

Track names are stable identifiers (``<table>.<signal>``, e.g. ``sched.runq_wait``); the analysis
and the report refer to them by name. ``panel`` groups tracks that share a plot row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace.signals import THROTTLE_EVENTS, counter_rate
from autoglm_trace.signals import column as col

DEFAULT_MAX_POINTS = 2000
NS = 1_000_000_000

# Panels, in the order the report draws them (top to bottom).
PANELS: dict[str, str] = {
    "latency": "Request latency",
    "engine_latency": "Engine latency (its own histograms)",
    "engine": "Engine state",
    "cpu": "CPU wait",
    "faults": "Page faults",
    "io": "Block I/O",
    "memory": "Memory",
    "gpu": "GPU",
}

@dataclass
class Track:
    """One time series. ``ts_ns`` is CLOCK_MONOTONIC ns (add ``Recording.wall_offset_ns`` for UNIX
    time); ``values`` are float64 in ``unit``; ``axis`` is "y" (primary) or "y2" (secondary) within
    the track's panel."""

    name: str
    label: str
    unit: str
    panel: str
    ts_ns: np.ndarray
    values: np.ndarray
    source: str
    axis: str = "y"
    mode: str = "lines"
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ts_ns.size)

    @property
    def peak(self) -> float:
        v = self.values[np.isfinite(self.values)]
        return float(v.max()) if v.size else float("nan")


# ----------------------------------------------------------------------------------------------
# Column access and vectorised helpers
# ----------------------------------------------------------------------------------------------
def estimate_interval_ns(ts: np.ndarray, key: np.ndarray | None = None, default: int = NS // 10) -> int:
    """The sampling interval: the median gap between successive samples of the same key."""
    if ts.size < 2:
        return default
    if key is None:
        u = np.unique(ts)
        d = np.diff(u)
    else:
        order = np.lexsort((ts, key))
        t, k = ts[order], key[order]
        d = np.diff(t)[k[1:] == k[:-1]]
    d = d[d > 0]
    return int(np.median(d)) if d.size else default


def sum_on_grid(
    ts: np.ndarray, value: np.ndarray, key: np.ndarray, grid_ns: int, t0: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sum per-key series onto a regular grid: mean per (key, cell) first (a key sampled twice in
    one cell is not double-counted), then the sum over keys per cell. Returns (cell start, sum)."""
    if ts.size == 0:
        return ts.astype(np.int64), value.astype(np.float64)
    grid_ns = max(int(grid_ns), 1)
    t0 = int(ts.min()) if t0 is None else t0
    cell = (ts - t0) // grid_ns
    ok = np.isfinite(value)
    cell, key, value = cell[ok], key[ok], value[ok]
    if cell.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    pair = np.stack([cell, key.astype(np.int64)], axis=1)
    upair, inv = np.unique(pair, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    mean = np.bincount(inv, weights=value) / np.bincount(inv)
    ucell, cinv = np.unique(upair[:, 0], return_inverse=True)
    total = np.bincount(cinv.reshape(-1), weights=mean)
    return t0 + ucell * grid_ns, total


def group_sum(ts: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sum each of ``values`` per distinct timestamp (the bucket start of bucketed tables)."""
    uts, inv = np.unique(ts, return_inverse=True)
    inv = inv.reshape(-1)
    out = [np.bincount(inv, weights=np.nan_to_num(v, nan=0.0), minlength=uts.size) for v in values]
    return uts, out


def group_max(ts: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum of ``value`` per distinct timestamp."""
    uts, inv = np.unique(ts, return_inverse=True)
    out = np.full(uts.size, -np.inf)
    np.maximum.at(out, inv.reshape(-1), np.nan_to_num(value, nan=-np.inf))
    out[np.isinf(out)] = np.nan
    return uts, out


def downsample(
    ts: np.ndarray, values: np.ndarray, max_points: int = DEFAULT_MAX_POINTS, how: str = "max"
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points: equal-width time bins, one point per non-empty bin at the
    bin's first timestamp, reduced with ``how`` ("max" keeps spikes, "mean", "last")."""
    n = ts.size
    if n <= max_points or max_points <= 0:
        return ts, values
    order = np.argsort(ts, kind="stable")
    ts, values = ts[order], values[order]
    span = int(ts[-1] - ts[0]) or 1
    b = ((ts - ts[0]).astype(np.float64) * (max_points - 1) / span).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    if how == "max":
        red = np.fmax.reduceat(values, starts)
    elif how == "mean":
        counts = np.diff(np.r_[starts, n])
        red = np.add.reduceat(np.nan_to_num(values), starts) / counts
    elif how == "last":
        red = values[np.r_[starts[1:] - 1, n - 1]]
    else:
        raise ValueError(f"unknown reduction {how!r}")
    return ts[starts], red


def _track(name, label, unit, panel, ts, values, source, max_points, how="max", **kw) -> Track:
    ts, values = downsample(np.asarray(ts, np.int64), np.asarray(values, np.float64), max_points, how)
    return Track(name, label, unit, panel, ts, values, source, **kw)


def _target_filter(table: pa.Table, column: str = "in_target") -> pa.Table:
    if column in table.column_names and table.num_rows:
        return table.filter(pc.fill_null(table.column(column), False))
    return table


# ----------------------------------------------------------------------------------------------
# Per-table tracks
# ----------------------------------------------------------------------------------------------
def proc_tracks(rec, max_points: int = DEFAULT_MAX_POINTS) -> list[Track]:
    """From ``proc_samples`` (the target tree, summed over its processes): CPU (cores), RSS,
    involuntary / voluntary context switches per second, minor / major faults per second, storage
    read / write bytes per second. Rates come from per-pid differences, so a process that exits
    or a pid that is reused does not produce a negative spike."""
    t = rec.table("proc_samples")
    if t.num_rows < 1:
        return []
    ts = col(t, "ts_ns", np.int64)
    pid = col(t, "pid", np.int64)
    grid = estimate_interval_ns(ts, pid)
    t0 = int(ts.min())
    out: list[Track] = []
    gts, rss = sum_on_grid(ts, col(t, "rss_bytes"), pid, grid, t0)
    out.append(_track("proc.rss", "target RSS", "bytes", "memory", gts, rss, "proc_samples", max_points,
                      "max"))
    cpu = col(t, "cpu_user_s") + col(t, "cpu_system_s")
    specs = [
        ("proc.cpu", "target CPU", "cores", "cpu", cpu, "y2", 1.0),
        ("proc.ctx_involuntary", "involuntary switches/s (proc)", "1/s", "cpu", col(t, "ctx_involuntary"), "y2", 1.0),
        ("proc.minflt", "minor faults/s (proc)", "1/s", "faults", col(t, "minflt"), "y", 1.0),
        ("proc.majflt", "major faults/s (proc)", "1/s", "faults", col(t, "majflt"), "y2", 1.0),
        ("proc.io_read", "target read (proc)", "bytes/s", "io", col(t, "io_read_bytes"), "y2", 1.0),
        ("proc.io_write", "target write (proc)", "bytes/s", "io", col(t, "io_write_bytes"), "y2", 1.0),
    ]
    for name, label, unit, panel, v, axis, scale in specs:
        rts, rate, rkey = counter_rate(ts, v, pid, scale)
        if rts.size == 0:
            continue
        gts, tot = sum_on_grid(rts, rate, rkey, grid, t0)
        out.append(_track(name, label, unit, panel, gts, tot, "proc_samples", max_points, "max", axis=axis))
    return out


def host_tracks(rec, max_points: int = DEFAULT_MAX_POINTS) -> list[Track]:
    """From ``host_samples``: MemAvailable and swap used (bytes), PSI "some" stall shares for
    memory / io / cpu and memory "full" (fraction of wall time, 0..1, from the cumulative
    microsecond totals), major faults, direct-scan pages and allocation stalls per second."""
    t = rec.table("host_samples")
    if t.num_rows < 1:
        return []
    ts = col(t, "ts_ns", np.int64)
    out = [
        _track("host.mem_available", "host MemAvailable", "bytes", "memory", ts, col(t, "mem_available_bytes"),
               "host_samples", max_points, "mean"),
    ]
    swap_used = col(t, "swap_total_bytes") - col(t, "swap_free_bytes")
    if np.nanmax(np.r_[swap_used, 0.0]) > 0:
        out.append(_track("host.swap_used", "host swap used", "bytes", "memory", ts, swap_used,
                          "host_samples", max_points, "max"))
    for name, label, c, panel in [
        ("host.psi_mem_some", "PSI memory some", "psi_mem_some_us", "memory"),
        ("host.psi_mem_full", "PSI memory full", "psi_mem_full_us", "memory"),
        ("host.psi_io_some", "PSI io some", "psi_io_some_us", "io"),
        ("host.psi_cpu_some", "PSI cpu some", "psi_cpu_some_us", "cpu"),
    ]:
        rts, rate, _ = counter_rate(ts, col(t, c), scale=1e-6)
        if rts.size:
            out.append(_track(name, label, "fraction", panel, rts, np.clip(rate, 0, 1), "host_samples",
                              max_points, "max", axis="y2", meta={"hidden": panel != "memory"}))
    for name, label, c, panel in [
        ("host.pgmajfault", "host major faults/s", "pgmajfault", "faults"),
        ("host.allocstall", "host allocation stalls/s", "allocstall", "memory"),
        ("host.pgscan_direct", "host direct-scan pages/s", "pgscan_direct", "memory"),
    ]:
        rts, rate, _ = counter_rate(ts, col(t, c))
        if rts.size:
            out.append(_track(name, label, "1/s", panel, rts, rate, "host_samples", max_points, "max",
                              axis="y2", meta={"hidden": True}))
    return out


def host_cpu_tracks(rec, max_points: int = DEFAULT_MAX_POINTS) -> list[Track]:
    """From ``host_cpu``: host-wide busy, iowait and steal as fractions of all cores (0..1), from
    per-core cumulative seconds differenced per core and averaged over the cores."""
    t = rec.table("host_cpu")
    if t.num_rows < 2:
        return []
    ts = col(t, "ts_ns", np.int64)
    core = col(t, "cpu", np.int64)
    ncpu = max(int(np.unique(core).size), 1)
    grid = estimate_interval_ns(ts, core)
    t0 = int(ts.min())
    busy = col(t, "user_s") + col(t, "system_s") + col(t, "irq_s")
    out = []
    for name, label, v in [("host_cpu.busy", "host CPU busy", busy),
                           ("host_cpu.iowait", "host iowait", col(t, "iowait_s")),
                           ("host_cpu.steal", "host steal", col(t, "steal_s"))]:
        rts, rate, rkey = counter_rate(ts, v, core)
        if rts.size == 0:
            continue
        gts, tot = sum_on_grid(rts, rate, rkey, grid, t0)
        out.append(_track(name, label, "fraction", "cpu", gts, np.clip(tot / ncpu, 0, 1), "host_cpu",
                          max_points, "max", axis="y2", meta={"hidden": name != "host_cpu.busy"}))
    return out


def sched_tracks(rec, max_points: int = DEFAULT_MAX_POINTS) -> list[Track]:
    """From ``sched`` (per bucket, summed over the target's threads): run-queue wait, off-CPU
    D-state and on-CPU time as milliseconds per second of wall time (i.e. thread-ms spent that way
    each second: 1000 = one thread's worth), the longest single run-queue wait in the bucket (ms),
    and involuntary switches per second."""
    t = rec.table("sched")
    if t.num_rows == 0:
        return []
    ts = col(t, "ts_ns", np.int64)
    bucket = col(t, "bucket_ns", np.float64)
    per_s = NS / np.where(bucket > 0, bucket, np.nan)
    uts, (runq, dstate, oncpu, invol) = group_sum(
        ts,
        col(t, "runq_wait_ns") * per_s / 1e6,
        col(t, "offcpu_dstate_ns") * per_s / 1e6,
        col(t, "oncpu_ns") * per_s / 1e6,
        col(t, "switches_involuntary") * per_s,
    )
    mts, rmax = group_max(ts, col(t, "runq_max_ns") / 1e6)
    return [
        _track("sched.runq_wait", "run-queue wait", "ms/s", "cpu", uts, runq, "sched", max_points),
        _track("sched.dstate", "off-CPU D-state", "ms/s", "cpu", uts, dstate, "sched", max_points),
        _track("sched.runq_max", "longest run-queue wait", "ms", "cpu", mts, rmax, "sched", max_points,
               meta={"hidden": True}),
        _track("sched.oncpu", "on-CPU", "ms/s", "cpu", uts, oncpu, "sched", max_points, meta={"hidden": True}),
        _track("sched.involuntary", "involuntary switches/s", "1/s", "cpu", uts, invol, "sched", max_points,
               axis="y2"),
    ]


def fault_tracks(rec, max_points: int = DEFAULT_MAX_POINTS) -> list[Track]:
    """From ``faults`` (per bucket, summed over the target's threads): minor faults (all minus
    major) and major faults per second."""
    t = rec.table("faults")
    if t.num_rows == 0:
        return []
    ts = col(t, "ts_ns", np.int64)
    bucket = col(t, "bucket_ns", np.float64)
    per_s = NS / np.where(bucket > 0, bucket, np.nan)
    allf, major = col(t, "faults"), col(t, "major")
    uts, (minor_s, major_s) = group_sum(ts, (allf - np.nan_to_num(major)) * per_s, major * per_s)
    return [
        _track("faults.minor", "minor faults/s", "1/s", "faults", uts, minor_s, "faults", max_points),
        _track("faults.major", "major faults/s", "1/s", "faults", uts, major_s, "faults", max_points, axis="y2"),
    ]


def block_io_tracks(rec, max_points: int = DEFAULT_MAX_POINTS) -> list[Track]:
    """From ``block_io``: mean issue-to-complete latency (ms) of every request on the host and the
    longest one per bucket, and bytes per second issued by the target and by everything else
    (the noisy neighbour)."""
    t = rec.table("block_io")
    if t.num_rows == 0:
        return []
    ts = col(t, "ts_ns", np.int64)
    bucket = col(t, "bucket_ns", np.float64)
    per_s = NS / np.where(bucket > 0, bucket, np.nan)
    in_target = col(t, "in_target", np.int64).astype(bool)
    nbytes = col(t, "bytes")
    uts, (cnt, lat_sum, tb, ob) = group_sum(
        ts, col(t, "count"), col(t, "lat_sum_ns"), np.where(in_target, nbytes, 0) * per_s,
        np.where(in_target, 0, nbytes) * per_s,
    )
    mean_ms = np.divide(lat_sum, cnt, out=np.full_like(lat_sum, np.nan), where=cnt > 0) / 1e6
    mts, lmax = group_max(ts, col(t, "lat_max_ns") / 1e6)
    out = [
        _track("block_io.lat_mean", "I/O latency mean", "ms", "io", uts, mean_ms, "block_io", max_points),
        _track("block_io.lat_max", "I/O latency max", "ms", "io", mts, lmax, "block_io", max_points),
        _track("block_io.target_bytes", "target I/O bytes/s", "bytes/s", "io", uts, tb, "block_io", max_points,
               axis="y2"),
    ]
    if np.any(ob > 0):
        out.append(_track("block_io.other_bytes", "other processes' I/O bytes/s", "bytes/s", "io", uts, ob,
                          "block_io", max_points, axis="y2"))
    return out


def reclaim_tracks(rec, max_points: int = DEFAULT_MAX_POINTS) -> list[Track]:
    """From ``reclaim``: direct-reclaim stall time of the target per second (ms/s), on a grid of
    the sampling interval (stalls are single events, not buckets)."""
    t = _target_filter(rec.table("reclaim"))
    if t.num_rows == 0:
        return []
    t = t.filter(pc.not_equal(t.column("kind"), "kswapd_wake"))
    if t.num_rows == 0:
        return []
    ts = col(t, "ts_ns", np.int64)
    grid = NS // 10
    cell = (ts // grid) * grid
    uts, (stall,) = group_sum(cell, col(t, "duration_ns") / 1e6 * (NS / grid))
    return [_track("reclaim.stall", "target direct-reclaim stall", "ms/s", "memory", uts, stall, "reclaim",
                   max_points, axis="y2", meta={"scale_note": "ms/s"})]


def gpu_tracks(rec, max_points: int = DEFAULT_MAX_POINTS) -> list[Track]:
    """From ``gpu_devices``, per GPU: memory used (bytes), utilisation (%: a kernel ran during the
    driver's window, not SM occupancy), power (W) and the clocks-event (throttle) bitmask as a
    0/1 series per named reason that occurred."""
    t = rec.table("gpu_devices")
    if t.num_rows == 0:
        return []
    ts = col(t, "ts_ns", np.int64)
    gpu = col(t, "gpu", np.int64)
    used = col(t, "mem_used_bytes")
    util = col(t, "util_gpu_pct")
    power = col(t, "power_mw") / 1000.0
    reasons = col(t, "clocks_event_reasons", np.uint64)
    out: list[Track] = []
    for g in np.unique(gpu).tolist():
        m = gpu == g
        gts = ts[m]
        out.append(_track(f"gpu.{g}.mem_used", f"GPU{g} memory used", "bytes", "gpu", gts, used[m], "gpu_devices",
                          max_points, meta={"gpu": g}))
        out.append(_track(f"gpu.{g}.util", f"GPU{g} util", "%", "gpu", gts, util[m], "gpu_devices", max_points,
                          "mean", axis="y2", meta={"gpu": g}))
        if np.isfinite(power[m]).any():
            out.append(_track(f"gpu.{g}.power", f"GPU{g} power", "W", "gpu", gts, power[m], "gpu_devices",
                              max_points, "mean", meta={"gpu": g, "hidden": True}))
        r = reasons[m]
        for e in THROTTLE_EVENTS:
            bit, label = e.bit, e.label
            on = (r & np.uint64(bit)) != 0
            if on.any():
                out.append(_track(f"gpu.{g}.throttle.{bit:#x}", f"GPU{g} throttle: {label}", "flag", "gpu", gts,
                                  on.astype(np.float64), "gpu_devices", max_points, "max", axis="y2",
                                  mode="markers", meta={"gpu": g, "bit": bit}))
    return out


ENGINE_QUANTILES = (("e2e", "end-to-end"), ("ttft", "time to first token"), ("itl", "inter-token latency"),
                    ("queue", "queue time"))


def engine_tracks(rec, max_points: int = DEFAULT_MAX_POINTS) -> list[Track]:
    """The serving engine's own signals (``record --scrape``): p50 / p99 of each latency phase per
    scrape window -- the windowed quantiles ``analyze`` finds incidents on (``analysis.engine``,
    ``histogram_quantile`` over the increase between two scrapes) -- and its KV-cache usage,
    running / waiting requests and preemptions. ``meta['scrape_interval_s']``: the time resolution."""
    from autoglm_trace.analysis import engine as engine_mod

    eng = engine_mod.load_engine(rec)
    if eng is None:
        return []
    meta = {"scrape_interval_s": round(eng.interval_s, 3)}
    out: list[Track] = []
    for key, words in ENGINE_QUANTILES:
        ph = eng.phases.get(key)
        if ph is None:
            continue
        for q, vals in (("p50", ph.p50), ("p99", ph.p99)):
            out.append(_track(f"engine.{key}_{q}", f"{words} {q} ({ph.metric})", "ms", "engine_latency", ph.end,
                              vals * 1e3, "scrape_samples", max_points, meta=dict(meta),
                              axis="y" if key != "queue" else "y2"))
    for role, label, unit, axis in (("kv_cache_usage", "KV-cache usage", "fraction", "y"),
                                    ("running", "requests running", "requests", "y2"),
                                    ("waiting", "requests waiting", "requests", "y2")):
        ts, v = engine_mod.gauge(eng, role)
        if len(ts):
            out.append(_track(f"engine.{role}", f"{label} ({eng.gauges[role]})", unit, "engine", ts, v,
                              "scrape_samples", max_points, meta=dict(meta), axis=axis))
    ts, v = engine_mod.gauge(eng, "preemptions")
    if len(ts) >= 2:
        from autoglm_trace.analysis.timeline import counter_deltas

        dts, d = counter_deltas(ts, np.zeros(len(ts), np.int64), v)
        out.append(_track("engine.preemptions", f"preemptions per scrape ({eng.gauges['preemptions']})", "count",
                          "engine", dts, d, "scrape_samples", max_points, meta=dict(meta, hidden=True),
                          mode="markers"))
    return out


def panel_title(panel: str, tracks: list[Track]) -> str:
    """A panel's title; the engine's panels name their scrape interval, the finest time they resolve."""
    title = PANELS.get(panel, panel)
    iv = next((t.meta["scrape_interval_s"] for t in tracks if t.panel == panel and "scrape_interval_s" in t.meta),
              None)
    return f"{title}, scraped every {iv:g} s (the time resolution)" if iv else title


def resource_tracks(rec, max_points: int = DEFAULT_MAX_POINTS) -> list[Track]:
    """Every resource track the recording supports, in panel order. A table that is absent or
    empty contributes nothing (see ``missing_signals`` for what that leaves unchecked)."""
    tracks: list[Track] = []
    for fn in (engine_tracks, sched_tracks, proc_tracks, host_cpu_tracks, fault_tracks, block_io_tracks,
               host_tracks, reclaim_tracks, gpu_tracks):
        tracks += fn(rec, max_points)
    order = {p: i for i, p in enumerate(PANELS)}
    return sorted(tracks, key=lambda tr: order.get(tr.panel, 99))


# ----------------------------------------------------------------------------------------------
# Request latency
# ----------------------------------------------------------------------------------------------
@dataclass
class LatencySeries:
    """Span latency: every span (or, above ``max_points``, each time bin's worst span) at its
    completion time, plus windowed p50 / p99."""

    ts_ns: np.ndarray  # span end (monotonic)
    latency_ms: np.ndarray
    ok: np.ndarray  # bool
    window_ns: int
    win_ts_ns: np.ndarray  # window start
    p50_ms: np.ndarray
    p99_ms: np.ndarray
    count: int  # spans in the recording


def window_quantiles(ts: np.ndarray, values: np.ndarray, window_ns: int,
                     qs: tuple[float, ...] = (0.5, 0.99)) -> tuple[np.ndarray, list[np.ndarray]]:
    """Quantiles of ``values`` per fixed time window (nearest-rank on sorted values), vectorised:
    one lexsort by (window, value), then index arithmetic per window."""
    if ts.size == 0:
        return np.empty(0, np.int64), [np.empty(0) for _ in qs]
    w = ts // window_ns
    order = np.lexsort((values, w))
    w, v = w[order], values[order]
    starts = np.flatnonzero(np.r_[True, w[1:] != w[:-1]])
    counts = np.diff(np.r_[starts, w.size])
    out = [v[starts + np.floor(q * (counts - 1) + 0.5).astype(np.int64)] for q in qs]
    return w[starts] * window_ns, out


def latency_series(rec, max_points: int = DEFAULT_MAX_POINTS, window_ns: int | None = None) -> LatencySeries | None:
    """From ``spans``: latency (end - start, ms) per span at its end time and p50/p99 per window
    (default: about 1/150 of the recording, at least 1 s). None when there are no spans."""
    from autoglm_trace.analysis.requests import recorded_requests  # noqa: PLC0415 - it imports the timeline

    t = recorded_requests(rec)
    if t.num_rows == 0:
        return None
    start = col(t, "ts_ns", np.int64)
    end = col(t, "end_ns", np.int64)
    lat = (end - start) / 1e6
    ok = pc.fill_null(t.column("ok"), True).to_numpy(zero_copy_only=False).astype(bool)
    span = int(end.max() - end.min()) if end.size else 0
    if window_ns is None:
        window_ns = max(NS, (span // 150 // NS) * NS)
    wts, (p50, p99) = window_quantiles(end, lat, window_ns)
    pts, plat = end, lat
    pok = ok
    if end.size > max_points:
        # Keep each bin's worst span (spikes are the point) and whether any failed in it.
        pts, plat = downsample(end, lat, max_points, "max")
        _, fail = downsample(end, (~ok).astype(np.float64), max_points, "max")
        pok = fail < 0.5
    return LatencySeries(pts, plat, pok, window_ns, wts, p50, p99, int(t.num_rows))


# ----------------------------------------------------------------------------------------------
# Markers and coverage
# ----------------------------------------------------------------------------------------------
@dataclass
class Marker:
    """A point event worth a vertical line: an OOM kill, a target process exit, a GPU Xid."""

    ts_ns: int
    kind: str  # oom_kill | exit | xid
    label: str
    pid: int | None = None


def markers(rec, include_exits: bool = True, max_exits: int = 50) -> list[Marker]:
    """OOM kills (``oom_kills``), GPU Xid errors (``gpu_events``) and, optionally, abnormal exits
    of target processes (``proc_events`` exits with a signal or non-zero code)."""
    out: list[Marker] = []
    oom = rec.table("oom_kills")
    if oom.num_rows:
        for ts, pid, comm, in_t in zip(col(oom, "ts_ns", np.int64).tolist(), oom.column("pid").to_pylist(),
                                       oom.column("comm").to_pylist(), oom.column("in_target").to_pylist()):
            where = "target" if in_t else "outside the target"
            out.append(Marker(int(ts), "oom_kill", f"OOM kill: {comm} ({pid}, {where})", pid))
    ev = rec.table("gpu_events")
    if ev.num_rows:
        x = ev.filter(pc.equal(ev.column("event"), "xid"))
        for ts, g, data, pid in zip(col(x, "ts_ns", np.int64).tolist(), x.column("gpu").to_pylist(),
                                    x.column("data").to_pylist(), x.column("pid").to_pylist()):
            out.append(Marker(int(ts), "xid", f"GPU{g} Xid {data}" + (f" (pid {pid})" if pid else ""), pid))
    if include_exits:
        pe = rec.table("proc_events")
        if pe.num_rows:
            ex = pe.filter(pc.equal(pe.column("event"), "exit"))
            sig = pc.fill_null(ex.column("signal"), 0)
            code = pc.fill_null(ex.column("exit_code"), 0)
            ex = ex.filter(pc.or_(pc.not_equal(sig, 0), pc.not_equal(code, 0)))
            if ex.num_rows > max_exits:
                ex = ex.slice(0, max_exits)
            killed = {m.pid: m.ts_ns for m in out if m.kind == "oom_kill"}
            for ts, pid, comm, c, s in zip(col(ex, "ts_ns", np.int64).tolist(), ex.column("pid").to_pylist(),
                                           ex.column("comm").to_pylist(), ex.column("exit_code").to_pylist(),
                                           ex.column("signal").to_pylist()):
                if pid in killed and 0 <= ts - killed[pid] < 5 * NS:
                    continue  # the OOM kill's own exit: one line is enough
                how = f"signal {s}" if s else f"code {c}"
                out.append(Marker(int(ts), "exit", f"exit: {comm} ({pid}, {how})", pid))
    return sorted(out, key=lambda m: m.ts_ns)


# Which tables each signal the report draws needs, and what is lost without them.
SIGNALS: list[tuple[str, tuple[str, ...], str]] = [
    ("request latency", ("spans",), "no latency timeline and no incidents to explain"),
    ("run-queue wait / preemption", ("sched", "preemptions"), "CPU contention and who preempted the target"),
    ("off-CPU D-state", ("sched",), "uninterruptible sleeps (I/O, locks in the kernel)"),
    ("page faults per thread", ("faults",), "fault storms per thread (only /proc totals)"),
    ("block I/O latency", ("block_io",), "disk latency and noisy-neighbour I/O"),
    ("direct reclaim", ("reclaim",), "memory-reclaim stalls"),
    ("OOM kills", ("oom_kills",), "kernel OOM-killer victims"),
    ("process memory", ("proc_samples",), "RSS growth of the target"),
    ("host memory / PSI", ("host_samples",), "host memory pressure"),
    ("GPU", ("gpu_devices",), "GPU memory, utilisation, power and throttling"),
]


def missing_signals(rec) -> list[dict[str, str]]:
    """What the recording cannot show, with the reason: the collector's reason from the manifest
    when one applies, else "table not recorded" / "recorded but empty"."""
    reasons = collector_reasons(rec)
    out = []
    for signal, tables, loses in SIGNALS:
        absent = [t for t in tables if not rec.has(t)]
        empty = [t for t in tables if rec.has(t) and rec.table(t).num_rows == 0]
        if not absent and not empty:
            continue
        if absent:
            why = "; ".join(dict.fromkeys(reasons.get(t, f"table {t} not recorded") for t in absent))
        elif len(empty) == len(tables):
            why = f"recorded, but no rows in {', '.join(empty)}"
        else:
            continue
        out.append({"signal": signal, "tables": ", ".join(tables), "reason": why, "loses": loses})
    return out


def collector_status(rec) -> list[dict[str, Any]]:
    """The manifest's ``collectors`` normalised to [{name, ok, reason, tables}]. Accepts a
    collector entry as a dict (``status``/``state``/``ok``/``available`` and ``reason``/
    ``error``, optional ``tables``) or a plain string (its reason, or "ok"). Collectors that were
    not asked for (status "off": no --scrape URL ...) are left out: nothing is missing there."""
    out = []
    for name, v in sorted(rec.collectors.items()):
        if isinstance(v, dict) and v.get("status") == "off":
            continue
        ok, reason, tables = True, "", []
        if isinstance(v, dict):
            st = v.get("status", v.get("state"))
            if "ok" in v:
                ok = bool(v["ok"])
            elif "available" in v:
                ok = bool(v["available"])
            elif isinstance(st, str):
                ok = st.lower() in ("ok", "running", "active", "started", "available", "enabled", "stopped", "done")
            reason = str(v.get("reason") or v.get("error") or "")
            if reason and "ok" not in v and "available" not in v and st is None:
                ok = False
            tables = [str(x) for x in (v.get("tables") or [])]
        elif isinstance(v, bool):
            ok = v
        elif v is not None:
            s = str(v)
            ok = s.lower() in ("ok", "running", "active", "started", "available", "enabled")
            reason = "" if ok else s
        out.append({"name": str(name), "ok": ok, "reason": reason, "tables": tables})
    return out


def collector_reasons(rec) -> dict[str, str]:
    """table -> "<collector>: <reason>" for the tables of collectors that did not run (the manifest
    lists every collector's tables); a table that a running collector owns has no such reason."""
    status = collector_status(rec)
    running = {t for c in status if c["ok"] for t in c["tables"]}
    out: dict[str, str] = {}
    for c in status:
        if c["ok"]:
            continue
        for t in c["tables"]:
            if t not in running:
                out.setdefault(t, f"{c['name']}: {c['reason'] or 'unavailable'}")
    return out
