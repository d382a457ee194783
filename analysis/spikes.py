"""Latency spikes: which requests were slow for the work they did, merged into incidents.

A request is slow relative to the typical latency of *similar* work, never a fixed threshold: for each
span name, the expected latency is a robust fit ``a + b * output_tokens`` (iteratively reweighted
least squares with Huber weights on relative residuals) when token counts are known, else the name's
median. Each request gets ``ratio = latency / expected``; the log-ratios' median and MAD give a robust
z-score, and a request is slow when ``z >= 4`` and ``ratio >= 1.5`` (both: a tight distribution
must not flag 10 % jitter, a wide one must not flag its own tail). A second test catches a moderate
slowdown of every request that per-request noise hides: per second (with >= 3 requests), the mean
log-ratio's robust z over all seconds >= 4 and a typical slowdown >= 1.4x marks that second's requests
slower than 1.12x as slow. A third catches a slowdown lasting a large part of a short recording
(which drags the median up): the rolling median of consecutive requests against its own quiet level
(25th percentile). The model is then refitted without the slow requests and the tests rerun once.
Slow requests whose intervals lie within ``gap`` of each other are merged into one incident.

Without spans, windows where a stall signal jumps far above its own median (``resource_incidents``)
stand in, so a recording of a server without request timings still says "run-queue wait spiked".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace.analysis.timeline import Timeline, col

Z_SLOW = 4.0
RATIO_SLOW = 1.5
MAD_FLOOR = 0.05  # log-ratio MAD floor: 5 % spread at least, so identical latencies don't flag noise
DEFAULT_GAP_NS = 2_000_000_000
WINDOW_NS = 1_000_000_000  # per-second check of the typical request
MIN_PER_WINDOW = 3
WINDOW_RATIO = 1.4
RUN_RATIO = 1.5  # a run of requests whose rolling median is 1.5x the quiet level
MAX_INCIDENTS = 20


@dataclass
class SpanScores:
    start: np.ndarray
    end: np.ndarray
    latency: np.ndarray  # ns
    expected: np.ndarray  # ns
    ratio: np.ndarray
    z: np.ndarray
    slow: np.ndarray  # bool
    ok: np.ndarray  # bool
    tokens: np.ndarray  # output tokens (0 unknown)
    names: np.ndarray  # object array of names
    model: list[dict[str, Any]] = field(default_factory=list)  # per-name fit, for the JSON


@dataclass
class Incident:
    start_ns: int
    end_ns: int
    kind: str  # latency | resource
    n_requests: int = 0  # slow requests
    n_overlapping: int = 0  # all requests that overlap the incident
    n_failed: int = 0
    latency_ms: float | None = None  # p99 of the slow requests
    max_ms: float | None = None
    baseline_ms: float | None = None  # median expected latency of the same requests
    extra_ms: float | None = None  # mean extra latency per slow request
    latency_frac: float | None = None  # mean share of a slow request's latency that is extra
    trigger: dict[str, Any] = field(default_factory=dict)  # resource incidents: the signal
    names: list[str] = field(default_factory=list)
    # Per-window weight of the incident (slow requests in flight): causes are judged where the slow
    # requests were, not uniformly over the incident's edges. None: uniform.
    weights: np.ndarray | None = None
    shape: str = "spike"  # spike | shift | periodic (analysis.anomalies)
    shape_info: dict[str, Any] = field(default_factory=dict)
    source: str = "spans"  # spans | engine_metrics | resource


def _fit_linear(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Robust y ~ a + b x (IRLS, Huber weights on relative residuals), a, b >= 0."""
    b = float(np.median(y / np.maximum(x, 1)))
    a = 0.0
    for _ in range(8):
        pred = np.maximum(a + b * x, 1.0)
        r = (y - pred) / pred
        s = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), 1e-3)
        u = np.abs(r) / (1.345 * s)
        w = np.where(u <= 1, 1.0, 1.0 / np.maximum(u, 1e-12)) / pred**2
        sw, sx, sy = w.sum(), (w * x).sum(), (w * y).sum()
        sxx, sxy = (w * x * x).sum(), (w * x * y).sum()
        det = sw * sxx - sx * sx
        if det <= 0:
            break
        b_new = (sw * sxy - sx * sy) / det
        a_new = (sy - b_new * sx) / sw
        if b_new < 0:
            b_new, a_new = 0.0, float(np.median(y))
        if a_new < 0:
            a_new, b_new = 0.0, float((w * x * y).sum() / max((w * x * x).sum(), 1e-30))
        if abs(a_new - a) < 1e-6 * max(abs(a), 1) and abs(b_new - b) < 1e-9 * max(abs(b), 1):
            a, b = a_new, b_new
            break
        a, b = a_new, b_new
    return float(a), float(b)


def _expected(lat: np.ndarray, tokens: np.ndarray, inv: np.ndarray, uniq: np.ndarray, fit: np.ndarray
              ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Expected latency per request from a per-name model fitted on the ``fit`` requests."""
    expected = np.full(len(lat), np.nan)
    model: list[dict[str, Any]] = []
    for gi, name in enumerate(uniq):  # one iteration per span *name*, not per span
        g = inv == gi
        m = g & fit
        if m.sum() < 3:
            m = g
        x, y = tokens[m], lat[m]
        has_tok = x > 0
        med = float(np.median(y))
        if has_tok.sum() >= 10 and has_tok.mean() >= 0.5 and np.ptp(x[has_tok]) > 0:
            a, b = _fit_linear(x[has_tok], y[has_tok])
            expected[g] = np.where(tokens[g] > 0, a + b * tokens[g], med)
            model.append({"name": str(name), "model": "a + b*output_tokens", "a_ms": a / 1e6,
                          "b_ms_per_token": b / 1e6, "requests": int(g.sum()), "fitted_on": int(m.sum())})
        else:
            expected[g] = med
            model.append({"name": str(name), "model": "median", "median_ms": med / 1e6,
                          "requests": int(g.sum()), "fitted_on": int(m.sum())})
    return np.maximum(expected, 1.0), model


def score_spans(spans: pa.Table) -> SpanScores | None:
    if spans.num_rows == 0:
        return None
    start = col(spans, "ts_ns", np.int64)
    end = col(spans, "end_ns", np.int64)
    lat = np.maximum(end - start, 1).astype(np.float64)
    tokens = col(spans, "output_tokens", np.float64, 0)
    ok = pc.fill_null(spans.column("ok"), True).to_numpy(zero_copy_only=False).astype(bool)
    names = pc.fill_null(spans.column("name"), "").to_numpy(zero_copy_only=False)
    uniq, inv = np.unique(names.astype(str), return_inverse=True)
    fit = ok.copy() if ok.any() else np.ones(len(lat), bool)
    # Two passes: the baseline model is refitted without the requests the first pass found slow,
    # so an incident covering much of the recording does not drag "expected" up with it.
    for _ in range(2):
        expected, model = _expected(lat, tokens, inv, uniq, fit)
        ratio = lat / expected
        lr = np.log(ratio)
        base = lr[fit] if fit.any() else lr
        med = float(np.median(base))
        mad = max(1.4826 * float(np.median(np.abs(base - med))), MAD_FLOOR)
        z = (lr - med) / mad
        slow = (z >= Z_SLOW) & (ratio >= RATIO_SLOW)
        slow |= _slow_windows(start, lr - med, ratio)
        slow |= _slow_runs(start, lr - med)
        if not slow.any() or slow.all():
            break
        fit = ok & ~slow
    return SpanScores(start, end, lat, expected, ratio, z, slow, ok, tokens, names, model)


def _slow_runs(start: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """Requests in a run of consecutive slow requests: a level shift that lasts (a hog running for
    half of a short recording) inflates the median and MAD the other tests rely on. The rolling median
    of k consecutive requests is compared with the quiet level (its 25th percentile), with noise from
    the requests' deviation from their own rolling median."""
    n = len(start)
    if n < 12:
        return np.zeros(n, dtype=bool)
    k = int(np.clip(n // 20, 5, 50))
    order = np.argsort(start, kind="stable")
    x = lr[order]
    pad = np.pad(x, (k // 2, k - 1 - k // 2), mode="edge")
    roll = np.median(np.lib.stride_tricks.sliding_window_view(pad, k), axis=1)
    quiet = float(np.percentile(roll, 25))
    noise = max(1.4826 * float(np.median(np.abs(x - roll))), MAD_FLOOR)
    zr = (roll - quiet) / (noise / np.sqrt(k))
    bad = (zr >= Z_SLOW) & (roll - quiet >= np.log(RUN_RATIO)) & (x - quiet >= np.log(RUN_RATIO) / 2)
    out = np.zeros(n, dtype=bool)
    out[order] = bad
    return out


def _slow_windows(start: np.ndarray, lr: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """Requests in seconds where the *typical* request was slow: on a noisy host a 2x slowdown of
    every request is lost in per-request noise but stands out in per-second means (noise / sqrt(n))."""
    if len(start) < 30:
        return np.zeros(len(start), dtype=bool)
    w = (start - start.min()) // WINDOW_NS
    cnt = np.bincount(w)
    mean = np.bincount(w, weights=lr) / np.maximum(cnt, 1)
    ok = cnt >= MIN_PER_WINDOW
    if ok.sum() < 10:
        return np.zeros(len(start), dtype=bool)
    m = mean[ok]
    med = float(np.median(m))
    # Noise from adjacent-second differences: a slowdown lasting several seconds is a level shift
    # that inflates the MAD of a short recording but adds only two large differences.
    sigma = max(1.4826 * float(np.median(np.abs(np.diff(m)))) / np.sqrt(2), MAD_FLOOR)
    wz = (mean - med) / sigma
    bad = ok & (wz >= Z_SLOW) & (np.exp(mean - med) >= WINDOW_RATIO)
    return bad[w] & (ratio >= WINDOW_RATIO * 0.8)


def latency_incidents(sc: SpanScores, gap_ns: int = DEFAULT_GAP_NS) -> list[Incident]:
    idx = np.flatnonzero(sc.slow)
    if len(idx) == 0:
        return []
    order = idx[np.argsort(sc.start[idx], kind="stable")]
    s, e = sc.start[order], sc.end[order]
    run_end = np.maximum.accumulate(e)
    new = np.ones(len(order), dtype=bool)
    new[1:] = s[1:] > run_end[:-1] + gap_ns
    gid = np.cumsum(new) - 1
    out: list[Incident] = []
    bounds = np.flatnonzero(new).tolist() + [len(order)]
    all_order = np.argsort(sc.start, kind="stable")
    sorted_start = sc.start[all_order]
    for g in range(gid[-1] + 1):  # one iteration per incident
        members = order[bounds[g] : bounds[g + 1]]
        a, b = int(sc.start[members].min()), int(sc.end[members].max())
        lat, exp = sc.latency[members], sc.expected[members]
        # every request overlapping [a, b]: start <= b and end >= a
        cand = all_order[: np.searchsorted(sorted_start, b, side="right")]
        over = cand[sc.end[cand] >= a]
        out.append(Incident(
            start_ns=a, end_ns=b, kind="latency", n_requests=len(members), n_overlapping=len(over),
            n_failed=int((~sc.ok[over]).sum()),
            latency_ms=float(np.percentile(lat, 99)) / 1e6, max_ms=float(lat.max()) / 1e6,
            baseline_ms=float(np.median(exp)) / 1e6, extra_ms=float(np.mean(lat - exp)) / 1e6,
            latency_frac=float(np.mean(1 - exp / lat)),
            names=sorted({str(n) for n in sc.names[members]})[:5],
        ))
    return out


# Stall signals watched when there are no spans, with the minimum jump that counts.
RESOURCE_WATCH = ("runq_wait", "preempted_time", "dstate_time", "reclaim_target", "blkio_target_latency",
                  "major_faults", "psi_cpu", "psi_memory", "psi_io", "gpu_throttle")
RESOURCE_RATIO = 5.0
RESOURCE_Z = 6.0


def resource_incidents(tl: Timeline, gap_windows: int = 2) -> list[Incident]:
    """Windows where a stall signal is far above its own typical level, merged."""
    flags = np.zeros(tl.n, dtype=bool)
    best_ratio = np.zeros(tl.n)
    best_sig = np.full(tl.n, "", dtype=object)
    for name in RESOURCE_WATCH:
        sig = tl.get(name)
        if sig is None:
            continue
        v = np.nan_to_num(sig.values, nan=0.0)
        med = float(np.median(v))
        mad = 1.4826 * float(np.median(np.abs(v - med)))
        base = max(med, sig.floor)
        ratio = v / base
        z = (v - med) / max(mad, sig.floor * 0.5, 1e-9)
        hit = (ratio >= RESOURCE_RATIO) & (z >= RESOURCE_Z)
        better = hit & (ratio > best_ratio)
        best_ratio[better] = ratio[better]
        best_sig[better] = name
        flags |= hit
    idx = np.flatnonzero(flags)
    if len(idx) == 0:
        return []
    new = np.ones(len(idx), dtype=bool)
    new[1:] = idx[1:] > idx[:-1] + gap_windows
    starts = np.flatnonzero(new).tolist() + [len(idx)]
    out = []
    for g in range(len(starts) - 1):
        w = idx[starts[g] : starts[g + 1]]
        top = w[np.argmax(best_ratio[w])]
        out.append(Incident(
            start_ns=tl.window_start(int(w[0])), end_ns=tl.window_start(int(w[-1]) + 1), kind="resource",
            source="resource",
            trigger={"signal": str(best_sig[top]), "ratio": float(best_ratio[top]),
                     "describe": tl.signals[str(best_sig[top])].describe},
        ))
    return out


def impact(i: Incident) -> tuple[float, str]:
    """How much an incident hurt, to rank incidents by, and its unit: the extra latency of all its
    slow requests ("ms"); a resource incident without request latency, its trigger's ratio x
    duration ("ratio*s")."""
    if i.kind == "latency" or i.n_requests:
        return (i.extra_ms or 0) * max(i.n_requests, 1), "ms"
    return float(i.trigger.get("ratio", 0)) * (i.end_ns - i.start_ns) / 1e9, "ratio*s"


def rank_and_cap(incidents: list[Incident], limit: int = MAX_INCIDENTS) -> tuple[list[Incident], int]:
    """Keep the ``limit`` incidents with the most impact (time order kept); count the rest."""
    if len(incidents) <= limit:
        return incidents, 0
    keep = sorted(sorted(incidents, key=lambda i: impact(i)[0], reverse=True)[:limit], key=lambda i: i.start_ns)
    return keep, len(incidents) - limit
