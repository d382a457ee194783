"""Time-to-full extrapolation for memory that grows toward a limit.

``GrowthEstimator.observe(subject, ts_ns, value, limit)`` keeps the last ``window_s`` seconds of
samples per subject (GPU0, pid 123, a memory cgroup ...), fits a robust slope and, when the value
would reach the limit within ``threshold_s`` at that slope, returns one row for the ``alerts`` table.

Why Theil-Sen (the median of pairwise slopes) and not least squares: memory series are step-like
(allocators grab big blocks, a KV cache grows a block at a time, the GC frees a burst), and one
outlier step drags a least-squares slope far more than the median of all pairwise slopes. The fit
runs on at most ``fit_points`` evenly spaced samples of the window, so its cost is bounded
(64 points: about 2,000 pairs, one numpy expression) whatever the sampling interval, and it is
redone at most every ``refit_s`` (1 s) per subject; the ETA uses each new value.

Rate limiting: one alert per subject when the condition starts, then at most one every
``repeat_s`` seconds while it lasts, plus one at once whenever the ETA has halved since the last
alert (the situation got markedly worse). When the ETA rises back above the threshold the
condition ends and the next crossing alerts again.

Pure logic: no clocks, no I/O; the caller passes timestamps (CLOCK_MONOTONIC ns).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoglm_trace.signals import human_bytes as format_bytes  # the one byte formatter

_NS = 1_000_000_000


def theil_sen_slope(t: np.ndarray, v: np.ndarray) -> float:
    """Median of the slopes of all pairs with distinct times (NaN when there are none)."""
    i, j = np.triu_indices(len(t), k=1)
    dt = t[j] - t[i]
    keep = dt > 0
    if not keep.any():
        return float("nan")
    return float(np.median((v[j][keep] - v[i][keep]) / dt[keep]))


@dataclass
class _Series:
    points: deque = field(default_factory=deque)  # (t_s, value)
    alert_t: float | None = None  # when the current condition last alerted (None: no condition)
    alert_eta: float | None = None
    fit_t: float | None = None  # when the cached slope was fitted
    slope: float | None = None


class GrowthEstimator:
    """Per-subject sliding window, robust slope, ETA-to-limit alerts (see the module doc)."""

    def __init__(
        self,
        kind: str = "memory_growth",
        window_s: float = 30.0,
        threshold_s: float = 300.0,
        min_span_s: float = 5.0,
        min_points: int = 5,
        repeat_s: float = 5.0,
        fit_points: int = 64,
        max_points: int = 2048,
        refit_s: float = 1.0,
        what: str = "memory",
    ) -> None:
        self.kind = kind
        self.window_s = window_s
        self.threshold_s = threshold_s
        self.min_span_s = min_span_s
        self.min_points = max(3, min_points)
        self.repeat_s = repeat_s
        self.fit_points = max(3, fit_points)
        self.max_points = max(self.fit_points, max_points)
        self.refit_s = refit_s
        self.what = what
        self._series: dict[str, _Series] = {}

    def forget(self, subject: str) -> None:
        """Drop a subject (the process exited, the device was lost)."""
        self._series.pop(subject, None)

    def slope(self, subject: str) -> float | None:
        """Current robust slope in units per second (None: not enough data)."""
        s = self._series.get(subject)
        if s is None or len(s.points) < self.min_points:
            return None
        return self._fit(s)

    def _fit(self, s: _Series) -> float | None:
        pts = s.points
        if pts[-1][0] - pts[0][0] < self.min_span_s or len(pts) < self.min_points:
            return None
        n = len(pts)
        if n > self.fit_points:
            idx = np.linspace(0, n - 1, self.fit_points).round().astype(int)
            arr = np.array([pts[k] for k in idx], dtype=float)
        else:
            arr = np.array(pts, dtype=float)
        slope = theil_sen_slope(arr[:, 0], arr[:, 1])
        return None if np.isnan(slope) else slope

    def observe(
        self, subject: str, ts_ns: int, value: float, limit: float | None
    ) -> dict[str, Any] | None:
        """Add a sample; return an ``alerts`` row when the limit is near, else None."""
        s = self._series.get(subject)
        if s is None:
            s = self._series[subject] = _Series()
        t = ts_ns / _NS
        if s.points and t < s.points[-1][0]:
            # Time went backwards (a different clock was mixed in): start over rather than fit
            # nonsense.
            s.points.clear()
            s.fit_t = s.slope = None
        s.points.append((t, float(value)))
        while s.points and t - s.points[0][0] > self.window_s:
            s.points.popleft()
        while len(s.points) > self.max_points:
            s.points.popleft()

        if limit is None or limit <= 0:
            return None
        # Refit at most every refit_s (the slope of a 30 s window barely moves in 100 ms, and the
        # fit is most of this class's cost); the ETA uses every new value.
        if s.fit_t is None or t - s.fit_t >= self.refit_s or t < s.fit_t:
            s.slope = self._fit(s)
            s.fit_t = t if s.slope is not None else None
        slope = s.slope
        if slope is None or slope <= 0:
            s.alert_t = s.alert_eta = None
            return None
        eta = max(0.0, (float(limit) - float(value)) / slope)
        if eta >= self.threshold_s:
            s.alert_t = s.alert_eta = None
            return None
        if s.alert_t is not None and s.alert_eta is not None:
            due = t - s.alert_t >= self.repeat_s
            worse = eta <= s.alert_eta / 2 and t > s.alert_t
            if not (due or worse):
                return None
        s.alert_t, s.alert_eta = t, eta
        if value >= limit:
            text = f"{subject} {self.what} at its limit ({format_bytes(value)} of {format_bytes(limit)}, still growing +{format_bytes(slope)}/s)"
        else:
            text = (
                f"{subject} {self.what} full in ~{eta:.0f} s at current growth "
                f"(+{format_bytes(slope)}/s; {format_bytes(value)} of {format_bytes(limit)})"
            )
        return {
            "ts_ns": int(ts_ns),
            "kind": self.kind,
            "subject": subject,
            "message": text,
            "eta_s": eta,
            "value": float(value),
            "limit": float(limit),
        }
