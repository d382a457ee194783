"""Anomaly shapes in a latency series, as operators name them: spike, sustained shift, periodic stalls.

A series is points in time order (requests, or the scrape windows of an engine's histograms), each
with ``x`` = log(latency / expected latency) -- 0 is typical, log 2 is twice as slow -- and a weight
(1 per request; the requests observed in a scrape window).

* **Sustained shift** (``find_shift``): a change point. The split that maximises the two-sample
  statistic ``(mean after - mean before) / (sigma sqrt(1/w_before + 1/w_after))`` on winsorised
  ``x``, with ``sigma`` the point-to-point noise from first differences (a level shift adds one large
  difference, so it does not inflate its own noise estimate). It counts when the statistic is >= 6,
  the medians differ by >= 1.25x and most points after the split lie above the midway level
  (>= 60 % after it, <= 50 % before it -- a slow warm-up is no level -- and >= 30 points apart). A
  second, downward change point inside the elevated part ends it if the level comes back to within
  half the step; otherwise the shift lasts to the end. It is reported as a shift (one incident,
  baseline taken before it) when it lasts to the end for >= 5 s and >= 10 % of the series, or when
  it ends but covered >= 30 % of the series and >= 10 s; shorter elevated stretches are spikes.
* **Periodic stalls** (``find_periodic``): affected points (``x`` >= max(2.5 sigma, log 1.15)) are
  merged into events (overlapping intervals; an event's time is the middle of the intersection of
  its requests' intervals, where the stall must have been). Events on a lattice ``t0 + k P`` --
  at least 5 lattice points, robust jitter <= 12 % of ``P``, >= 80 % of events within P/4 of the
  lattice, >= 30 % of the lattice points hit (a stall while no request is in flight leaves no
  trace), and phases concentrated by a Rayleigh test (``n R^2`` >= 8, more with more candidate
  periods) -- are periodic stalls "every P +- jitter, d ms"; the longest period that fits wins (P/2
  fits the same events). Random slow requests spread uniformly around any lattice (jitter ~ 0.37 P)
  and do not pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHIFT_STAT = 6.0
SHIFT_RATIO = 1.25
SHIFT_MIN_S = 5.0
SHIFT_MIN_FRAC = 0.10
SHIFT_ENDED_MIN_S = 10.0
SHIFT_ENDED_MIN_FRAC = 0.30
SHIFT_MIN_POINTS = 8
NOISE_FLOOR = 0.05

PERIODIC_MIN_EVENTS = 5
PERIODIC_JITTER = 0.12
PERIODIC_ON_LATTICE = 0.8
PERIODIC_HIT = 0.3
RAYLEIGH_Z = 8.0
AFFECTED_Z = 2.5
AFFECTED_RATIO = 1.15


@dataclass
class Shift:
    start_ns: int
    end_ns: int  # the end of the elevated part (the last point's end when it lasts)
    to_end: bool
    first: int  # index of the first elevated point (time order)
    stop: int  # one past the last elevated point
    level_before: float  # weighted median of x before the change point
    level_after: float
    stat: float
    located_by: str | None = None  # the stall signal that located the change point (corroborated_shift)

    @property
    def ratio(self) -> float:
        return float(np.exp(self.level_after - self.level_before))


@dataclass
class Periodic:
    period_s: float
    jitter_s: float
    events: list[tuple[int, int]]  # (start_ns, end_ns) of each stall event's affected interval
    event_ns: list[int]  # estimated stall time of each event
    members: list[np.ndarray] = field(default_factory=list)  # point indices per event
    hit_fraction: float = 0.0
    phase_ns: float = 0.0  # lattice: stall k at phase_ns + k * period (k from k_first to k_last)
    k_first: int = 0
    k_last: int = 0

    def lattice_ns(self) -> np.ndarray:
        return self.phase_ns + np.arange(self.k_first, self.k_last + 1) * self.period_s * 1e9

    @property
    def start_ns(self) -> int:
        return min(a for a, _ in self.events)

    @property
    def end_ns(self) -> int:
        return max(b for _, b in self.events)


def noise(x: np.ndarray) -> float:
    """Point-to-point noise: robust scale of first differences / sqrt 2."""
    if len(x) < 3:
        return NOISE_FLOOR
    return max(1.4826 * float(np.median(np.abs(np.diff(x)))) / np.sqrt(2), NOISE_FLOOR)


def _wmedian(x: np.ndarray, w: np.ndarray) -> float:
    if len(x) == 0:
        return float("nan")
    o = np.argsort(x)
    c = np.cumsum(w[o])
    return float(x[o][np.searchsorted(c, 0.5 * c[-1])])


def change_point(x: np.ndarray, w: np.ndarray, min_seg: int, sign: int = 1,
                 allowed: np.ndarray | None = None) -> tuple[int, float]:
    """Best split k (x[:k] | x[k:]) and its statistic for a change of ``sign`` (+1 up, -1 down);
    ``allowed[k]``: only splits before point k are candidates (a change point known from elsewhere)."""
    n = len(x)
    if n < 2 * min_seg:
        return -1, 0.0
    sig = noise(x)
    med = float(np.median(x))
    xc = np.clip(x, med - 6 * sig, med + 6 * sig)  # winsorised: one huge spike is no level
    cw = np.cumsum(w)
    cs = np.cumsum(w * xc)
    k = np.arange(min_seg, n - min_seg + 1)
    wb, sb = cw[k - 1], cs[k - 1]
    wa, sa = cw[-1] - wb, cs[-1] - sb
    ok = (wb > 0) & (wa > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = sign * (sa / wa - sb / wb) / (sig * np.sqrt(1 / wb + 1 / wa))
    if allowed is not None:
        ok &= allowed[k]
    stat = np.where(ok, stat, -np.inf)
    i = int(np.argmax(stat))
    if not np.isfinite(stat[i]):
        return -1, 0.0
    return int(k[i]), float(stat[i])


def find_shift(start: np.ndarray, end: np.ndarray, x: np.ndarray, w: np.ndarray | None = None,
               span_ns: tuple[int, int] | None = None, min_stat: float = SHIFT_STAT,
               min_ratio: float = SHIFT_RATIO, near_ns: tuple[int, int] | None = None) -> Shift | None:
    """The sustained shift in a series (points in time order by ``start``), or None. ``near_ns``:
    the change point must start inside this interval (a change another signal located: one
    tested split instead of a search over all of them, so ``min_stat`` can be lower)."""
    n = len(x)
    w = np.ones(n) if w is None else np.asarray(w, dtype=float)
    # Points are requests, or scrape windows weighted by their requests: count requests.
    if n < 6 or w.sum() < 2 * SHIFT_MIN_POINTS:
        return None
    lo, hi = span_ns if span_ns is not None else (int(start[0]), int(end.max()))
    span = max(hi - lo, 1)
    min_seg = max(3, min(SHIFT_MIN_POINTS // 2, n // 4), n // 50)
    allowed = None if near_ns is None else (start >= near_ns[0]) & (start <= near_ns[1])
    k, stat = change_point(x, w, min_seg, allowed=allowed)
    if k < 0 or stat < min_stat:
        return None
    before, after = _wmedian(x[:k], w[:k]), _wmedian(x[k:], w[k:])
    if after - before < np.log(min_ratio):
        return None
    stop = n
    # Did it come back? A downward change point inside the elevated part, back near the baseline.
    tail = x[k:]
    if len(tail) >= 2 * min_seg:
        k2, stat2 = change_point(tail, w[k:], min_seg, sign=-1)
        if k2 > 0 and stat2 >= max(min_stat, SHIFT_STAT):
            back = _wmedian(tail[k2:], w[k:][k2:])
            if back <= before + 0.5 * (after - before):
                stop = k + k2
                after = _wmedian(x[k:stop], w[k:stop])
    seg = x[k:stop]
    mid = before + 0.5 * (after - before)
    above, above_before = float(np.average(seg > mid, weights=w[k:stop])), float(np.average(x[:k] > mid, weights=w[:k]))
    if above < 0.6 or above_before > 0.5 or above - above_before < 0.3:
        return None  # not a level: a few large spikes dragged the mean
    if w[k:stop].sum() < SHIFT_MIN_POINTS or stop - k < 3:
        return None
    t0 = int(start[k])
    to_end = stop == n
    t1 = hi if to_end else int(end[stop - 1])
    dur = t1 - t0
    if to_end:
        if dur < SHIFT_MIN_S * 1e9 or dur < SHIFT_MIN_FRAC * span:
            return None
    elif dur < SHIFT_ENDED_MIN_S * 1e9 or dur < SHIFT_ENDED_MIN_FRAC * span:
        return None
    return Shift(t0, t1, to_end, k, stop, before, after, stat)


def affected(x: np.ndarray) -> np.ndarray:
    """Points slower than the typical one by more than their noise (a milder test than a spike's:
    periodicity, not size, is the evidence)."""
    med = float(np.median(x))
    sig = max(1.4826 * float(np.median(np.abs(x - med))), NOISE_FLOOR)
    return (x - med >= max(AFFECTED_Z * sig, np.log(AFFECTED_RATIO)))


def _events(start: np.ndarray, end: np.ndarray, idx: np.ndarray) -> tuple[list[tuple[int, int]], list[int],
                                                                           list[np.ndarray]]:
    order = idx[np.argsort(start[idx], kind="stable")]
    ev, when, members = [], [], []
    i = 0
    while i < len(order):
        j = i + 1
        hi = end[order[i]]
        while j < len(order) and start[order[j]] <= hi:
            hi = max(hi, end[order[j]])
            j += 1
        m = order[i:j]
        a, b = int(start[m].min()), int(end[m].max())
        lo_i, hi_i = int(start[m].max()), int(end[m].min())  # where every member was in flight
        when.append((lo_i + hi_i) // 2 if lo_i <= hi_i else int(np.median((start[m] + end[m]) // 2)))
        ev.append((a, b))
        members.append(m)
        i = j
    return ev, when, members


def find_periodic(start: np.ndarray, end: np.ndarray, x: np.ndarray, min_period_ns: int,
                  hit: np.ndarray | None = None) -> Periodic | None:
    """Periodic stalls among the affected points (``hit``, default ``affected(x)``), or None.
    ``min_period_ns``: the shortest period that can be told apart (a typical request's length:
    two stalls inside one request are one event; twice the scrape interval for scraped windows)."""
    hit = affected(x) if hit is None else hit
    idx = np.flatnonzero(hit)
    if len(idx) < PERIODIC_MIN_EVENTS:
        return None
    ev, when, members = _events(start, end, idx)
    if len(ev) < PERIODIC_MIN_EVENTS:
        return None
    t = np.asarray(when, dtype=np.float64)
    gaps = np.diff(t)
    # Candidate periods: each gap and its halves, thirds, quarters (stalls that hit no request in
    # flight leave no event, so gaps are multiples of the period), rounded to 1 % to dedupe.
    cand = np.unique(np.round(np.log(np.concatenate([gaps / m for m in (1, 2, 3, 4)])), 2))
    cand = np.exp(cand)
    cand = cand[(cand >= min_period_ns) & (cand > 0)]
    z_need = max(RAYLEIGH_Z, np.log(max(len(cand), 1)) + 4)
    best = None
    for p0 in cand:
        k = np.round((t - t[0]) / p0)
        if len(np.unique(k)) < PERIODIC_MIN_EVENTS:
            continue
        b, a = np.polyfit(k, t, 1)
        if b < min_period_ns:
            continue
        r = t - (a + b * k)
        jitter = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        on = float(np.mean(np.abs(r) <= b / 4))
        hitf = len(np.unique(k)) / (k.max() - k.min() + 1)
        phase = 2 * np.pi * r / b
        z = len(t) * float(np.abs(np.mean(np.exp(1j * phase)))) ** 2  # Rayleigh test of the phases
        if jitter > PERIODIC_JITTER * b or on < PERIODIC_ON_LATTICE or hitf < PERIODIC_HIT or z < z_need:
            continue
        if best is None or b > best[1] * 1.05:  # the longest period that explains the events
            best = (z, b, jitter, on, hitf, r, a, k)
    if best is None:
        return None
    _, period, jitter, on, hitf, r, phase, ks = best
    keep = np.abs(r) <= period / 4  # events off the lattice are other trouble, not this pattern
    ev = [e for e, k in zip(ev, keep, strict=True) if k]
    when = [w for w, k in zip(when, keep, strict=True) if k]
    members = [m for m, k in zip(members, keep, strict=True) if k]
    return Periodic(period / 1e9, max(jitter, 0.0) / 1e9, ev, when, members, round(hitf, 3), float(phase),
                    int(ks.min()), int(ks.max()))
