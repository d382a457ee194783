"""Causes of an incident: every resource signal compared with the baseline, ranked by what it explains.

For each signal (see ``analysis.timeline``) the incident value is its mean over the incident's windows
and the baseline is the windows outside every incident. Two numbers come out:

* ``ratio`` = incident / max(baseline mean, the signal's floor) (inverted for signals where lower is
  worse: free memory, clocks), and
* ``z`` = (incident - baseline median) / scale, scale = max(1.4826 MAD, (p90 - median) / 1.28, floor):
  a robust effect size that a bursty baseline shrinks.

``confidence = clip(log(ratio) / log 8, 0, 1) * clip(z / 3, 0, 1)``: 8x the baseline at 3 robust
sigmas is certain. A cause kind's confidence is the best of its *specific* signals -- or, for CPU
contention and memory pressure, whose stall signals are specific, ``share * clip(z_stall / 3, 0, 1)``
when larger (z_stall: the better of the stall signal's z and the z of the stall fraction of busy
time against the baseline windows' fractions): a run-queue wait that doubled and accounts for the extra latency is the cause.

``share`` is how much of the extra latency the cause can account for. For stall causes the target's
stall fraction of busy time f (stall / (on CPU + stalls)) goes from fb (baseline) to fi (incident);
the same work then takes (1 - fb) / (1 - fi) as long, a predicted extra-latency fraction of
1 - (1 - fi) / (1 - fb), compared with the slow requests' measured one (1 - expected / latency). GPU throttling's share is
the lost clock fraction over the same. ``score = confidence * (0.3 + 0.7 * share)``; where no share
can be computed, ``score = 0.5 * confidence``. Kinds with confidence >= 0.5 and score >= 0.35 are
reported, best score first (a kind whose signals moved but whose measured share is ~0 is listed under
``ruled_out``); when none is, the incident's cause is ``unexplained`` and the largest changes are shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from autoglm_trace.analysis.spikes import Incident
from autoglm_trace.analysis.timeline import Signal, Timeline
from autoglm_trace.analysis.timesplit import PART_OF

PRESENT = 0.5
LISTED = 0.35
# Kinds whose stall signal is specific to them (run-queue wait; direct reclaim), so its share of the
# extra latency can carry the confidence. D-state sleep is not: both I/O and major faults cause it.
SHARE_CONFIDENT = ("cpu_contention", "memory_pressure", "lock_contention", "gil_contention")

# kind -> (specific signals that show it, stall signals it can be charged with)
CAUSES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cpu_contention": (("runq_wait", "preempted_time", "wait_charged_to_others", "preemptions_by_others",
                        "tree_others_oncpu",
                        "involuntary_switches",
                        "psi_cpu", "host_steal", "runq_max"), ("runq_wait",)),
    "memory_pressure": (("reclaim_target", "major_faults", "psi_memory", "psi_memory_full", "allocstalls",
                         "pgscan_direct", "mem_available", "reclaim_others", "host_major_faults"),
                        ("reclaim_target",)),
    # Waits on other threads of the target (analysis/wakers.py): a lock / queue holder, the GIL holder.
    "lock_contention": (("lock_wait",), ("lock_wait",)),
    "gil_contention": (("gil_wait",), ("gil_wait",)),
    "io_wait": (("blkio_target_avg_latency", "blkio_others_bytes", "blkio_others_count", "psi_io",
                 "psi_io_full", "host_iowait"), ("dstate_time",)),
    "gpu_throttle": (("gpu_throttle", "gpu_sm_clock"), ()),
    "gpu_memory": (("gpu_memory",), ()),
    "gpu_error": (("gpu_xid",), ()),
    "oom": (("oom_kills_target", "oom_kills"), ()),
    "load": (("request_arrivals",), ()),
}
# Signals shown as context with every incident (not causes themselves).
CONTEXT = ("oncpu_time", "dstate_time", "target_cpu", "target_rss", "gpu_util", "requests_in_flight",
           "host_cpu_busy", "minor_faults", "blkio_target_latency", "gpu_pcie", "kswapd_wakes",
           # the serving engine's own state (analysis.engine, from --scrape)
           "engine_kv_cache", "engine_running", "engine_waiting", "engine_preemptions", "engine_queue",
           "engine_ttft", "engine_itl")


@dataclass
class Stat:
    signal: Signal
    incident: float
    baseline: float
    median: float
    ratio: float
    z: float

    @property
    def confidence(self) -> float:
        if not np.isfinite(self.ratio) or self.ratio <= 1:
            return 0.0
        return float(np.clip(np.log(self.ratio) / np.log(8), 0, 1) * np.clip(self.z / 3, 0, 1))

    def as_dict(self) -> dict[str, Any]:
        return {"incident": _num(self.incident), "baseline": _num(self.baseline), "ratio": _num(self.ratio, 3),
                "z": _num(self.z, 2), "unit": self.signal.unit, "describe": self.signal.describe,
                "source": self.signal.source, "scope": self.signal.scope}


def _num(v: float, nd: int = 6) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), nd)


def signal_stat(sig: Signal, inc: np.ndarray, base: np.ndarray, weights: np.ndarray | None = None) -> Stat | None:
    vi, vb = sig.values[inc], sig.values[base]
    wi = weights[inc] if weights is not None else np.ones(len(vi))
    fi = np.isfinite(vi)
    vi, wi, vb = vi[fi], wi[fi], vb[np.isfinite(vb)]
    if len(vi) == 0 or len(vb) == 0:
        return None
    b = float(vb.mean())
    if sig.peak:  # "how close to the limit did it get", not the average
        i = float(vi.max() if sig.direction >= 0 else vi.min())
    elif wi.sum() > 0:
        i = float(np.average(vi, weights=wi))
    else:
        i = float(vi.mean())
    med = float(np.median(vb))
    mad = 1.4826 * float(np.median(np.abs(vb - med)))
    tail = (float(np.percentile(vb, 90)) - med) / 1.28
    scale = max(mad, tail, sig.floor, 1e-12)
    if sig.direction >= 0:
        ratio = i / max(b, sig.floor, 1e-12)
        z = (i - med) / scale
    else:
        ratio = b / max(i, sig.floor, 1e-12)
        z = (med - i) / scale
    return Stat(sig, i, b, med, ratio, z)


def _gpu_memory_confidence(st: Stat) -> float:
    # "Near the limit" matters, not the ratio: 70 % -> 99 % is only 1.4x but is the whole story.
    near = np.clip((st.incident - 0.90) / 0.08, 0, 1)
    rise = np.clip((st.incident - st.baseline) / 0.05, 0, 1)
    return float(near * max(rise, 0.5 if st.incident >= 0.98 else 0.0))


def _stall_parts(tl: Timeline, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per window: the target's stall time in ``names`` and its busy time (on CPU + every stall)."""
    stalls = [tl.signals[n] for n in names if n in tl.signals]
    if not stalls:
        return None
    stall = sum(np.nan_to_num(s.values) for s in stalls)
    busy = stall.copy()
    for n in ("oncpu_time", "runq_wait", "dstate_time", "reclaim_target"):
        if n in tl.signals and n not in names:
            busy = busy + np.nan_to_num(tl.signals[n].values)
    return stall, busy


def _stall_fraction(tl: Timeline, names: tuple[str, ...], mask: np.ndarray) -> float | None:
    parts = _stall_parts(tl, names)
    if parts is None:
        return None
    stall, busy = float(parts[0][mask].sum()), float(parts[1][mask].sum())
    return stall / busy if busy > 0 else None


def _stall_fraction_z(tl: Timeline, names: tuple[str, ...], fi: float, base: np.ndarray) -> float | None:
    """Robust z of the incident's stall fraction against the baseline windows' fractions: the
    fraction of busy time is steadier than raw stall time, which also moves with the load."""
    parts = _stall_parts(tl, names)
    if parts is None:
        return None
    stall, busy = parts[0][base], parts[1][base]
    ok = busy > 0
    if ok.sum() < 3:
        return None
    f = stall[ok] / busy[ok]
    med = float(np.median(f))
    scale = max(1.4826 * float(np.median(np.abs(f - med))), (float(np.percentile(f, 90)) - med) / 1.28, 0.02)
    return (fi - med) / scale


def _psi_fraction(tl: Timeline, name: str, mask: np.ndarray) -> float | None:
    s = tl.get(name)
    if s is None or not mask.any():
        return None
    return float(np.nanmean(s.values[mask]) / tl.width_ns)


def baseline_mask(tl: Timeline, incidents: list[Incident], margin: int = 1) -> np.ndarray:
    for mg in range(margin, -1, -1):
        # Without the margin before giving up on it: the incident's own windows must never be its
        # baseline (a recording cut into many short incidents leaves few windows a margin away).
        m = np.ones(tl.n, dtype=bool)
        for inc in incidents:
            a = max(0, int(tl.index(np.array([inc.start_ns]))[0]) - mg)
            b = int(tl.index(np.array([inc.end_ns]))[0]) + mg
            m[a : b + 1] = False
        if m.sum() >= 3:
            break
    if m.sum() < 3:  # everything is an incident: compare with the whole recording
        m[:] = True
    # With request timings, idle windows (start-up, after the load) are no baseline for a server
    # under load: compare with windows where requests were in flight.
    load = tl.get("requests_in_flight")
    if load is not None:
        busy = m & (np.nan_to_num(load.values) >= 0.5)
        if busy.sum() >= 5:  # too few busy windows left: a thinner baseline is worse than idle ones
            m = busy
    return m


def _summary(st: Stat) -> str:
    s = st.signal
    if s.direction < 0:
        return f"{s.describe} {_fmt(st.incident, s.unit)} vs {_fmt(st.baseline, s.unit)} baseline"
    if st.ratio >= 100 and st.baseline < s.floor:
        return f"{s.describe} {_fmt(st.incident, s.unit)} vs ~none at baseline"
    return f"{s.describe} {st.ratio:.1f}x baseline ({_fmt(st.incident, s.unit)} vs {_fmt(st.baseline, s.unit)})"


def _fmt(v: float, unit: str) -> str:
    if unit == "ns/window":
        return f"{v / 1e6:.1f} ms/s"
    if unit == "ns":
        return f"{v / 1e6:.2f} ms"
    if unit == "fraction":
        return f"{100 * v:.0f}%"
    if unit.startswith("bytes"):
        return f"{v / 2**20:.1f} MiB" + ("/s" if "window" in unit else "")
    if unit == "count/window":
        return f"{v:.1f}/s"
    return f"{v:.3g} {unit}"


def score_incident(tl: Timeline, inc: Incident, base: np.ndarray,
                   split_shares: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Ranked causes (dicts without culprits) for one incident. ``split_shares``: the part of the slow
    requests' extra latency each part of their time split accounts for (``timesplit.extra_shares``);
    where given, the stall causes' shares are read from it."""
    im = tl.window_mask(inc.start_ns, inc.end_ns)
    stats: dict[str, Stat] = {}
    for name, sig in tl.signals.items():
        st = signal_stat(sig, im, base, inc.weights)
        if st is not None:
            stats[name] = st
    lat_frac = inc.latency_frac if inc.latency_frac and inc.latency_frac > 0 else None
    causes: list[dict[str, Any]] = []
    ruled_out: list[dict[str, Any]] = []
    for kind, (specific, stall_names) in CAUSES.items():
        present = [stats[n] for n in specific if n in stats]
        if not present:
            continue
        if kind == "gpu_memory":
            conf = _gpu_memory_confidence(present[0])
        elif kind in ("oom", "gpu_error"):
            conf = 1.0 if any(st.incident > 0 for st in present if st.signal.name != "oom_kills") else 0.0
            if kind == "oom" and conf == 0 and "oom_kills" in stats and stats["oom_kills"].incident > 0:
                conf = 0.6  # someone else was killed: the host/memcg was out of memory
        else:
            conf = max(st.confidence for st in present)
        ev: dict[str, Any] = {n: stats[n].as_dict() for n in specific if n in stats}
        share = _share(kind, tl, stats, stall_names, im, base, lat_frac, ev)
        if split_shares is not None and kind in PART_OF and share is not None:
            share = _split_share(kind, split_shares, ev, "major_faults" in stats
                                 and stats["major_faults"].confidence >= PRESENT)
        top = max(present, key=lambda st: st.confidence if kind not in ("gpu_memory",) else st.incident)
        summary = _summary(top)
        if kind in SHARE_CONFIDENT and share is not None:
            # A moderate rise of a stall that is specific to this cause and accounts for the extra
            # latency is strong evidence even when it is "only" 2x (a CPU shared by two runnable
            # tasks): confidence from the share, at >= 3 robust sigmas of the stall signal.
            zs = [stats[n] for n in stall_names if n in stats]
            if zs:
                st = max(zs, key=lambda x: x.z)
                zf = ev.get("stall_fraction", {}).get("z")
                conf_share = float(share * np.clip(max(st.z, zf if zf is not None else -np.inf) / 3, 0, 1))
                if conf_share > conf:
                    conf, top = conf_share, st
                    sf = ev.get("stall_fraction", {})
                    summary = (f"{_summary(st)}; stalled {100 * sf.get('incident', 0):.0f}% of busy time vs "
                               f"{100 * sf.get('baseline', 0):.0f}% at baseline")
        if conf < PRESENT:
            continue
        score = conf * (0.3 + 0.7 * share) if share is not None else 0.5 * conf
        if score < LISTED:
            # Present but measured to account for (almost) none of the extra latency: e.g. host-wide
            # major faults of other processes while the target's own stalls did not grow.
            ruled_out.append({"kind": kind, "score": round(float(score), 3), "confidence": round(conf, 3),
                              "share": round(float(share or 0), 3), "summary": summary})
            continue
        causes.append({"kind": kind, "score": round(float(score), 3), "confidence": round(conf, 3),
                       "share": None if share is None else round(float(share), 3),
                       "effect_size": _num(top.z, 2), "ratio": _num(top.ratio, 3),
                       "summary": summary, "signal": top.signal.name, "evidence": ev,
                       "culprits": []})
    causes.sort(key=lambda c: c["score"], reverse=True)
    if not causes:
        ranked = sorted((st for st in stats.values() if st.signal.scope != "load"),
                        key=lambda st: st.confidence + 1e-3 * min(st.ratio, 1e3), reverse=True)[:3]
        best = max([r["score"] for r in ruled_out] + [0.5 * st.confidence for st in ranked], default=0.0)
        summary = "no recorded resource signal accounts for the extra latency"
        if ruled_out:
            r0 = max(ruled_out, key=lambda r: r["score"])
            summary += (f"; {r0['kind']} changed ({r0['summary']}) but the target's own stalls account for "
                        f"{100 * r0['share']:.0f}% of it")
        elif ranked:
            summary += f"; largest change: {_summary(ranked[0])}"
        causes.append({
            "kind": "unexplained", "score": round(1 - best, 3), "confidence": None, "share": None,
            "effect_size": None, "ratio": None, "summary": summary, "signal": None,
            "evidence": {st.signal.name: st.as_dict() for st in ranked}, "culprits": [],
        })
    context = {n: stats[n].as_dict() for n in CONTEXT if n in stats}
    for c in causes:
        c["context"] = context
        c["ruled_out"] = ruled_out
    return causes


def _split_share(kind: str, split_shares: dict[str, float], ev: dict[str, Any], major_faults: bool) -> float:
    """The share measured on the slow requests' own threads: how much their time in this kind's part
    (run-queue wait, GIL wait, lock wait, D state, direct reclaim) grew, as a part of their extra latency. It replaces
    the stall-fraction estimate, which sums every thread of the victim processes -- a busy culprit
    thread of the same process among them (its CPU time dilutes the fraction), idle threads woken at
    shutdown too."""
    parts = (PART_OF[kind],)
    if kind == "memory_pressure" and major_faults:
        parts += ("dstate",)  # major faults sleep in D state waiting for the read
    share = float(np.clip(sum(split_shares.get(p, 0.0) for p in parts), 0, 1))
    ev["time_split_share"] = {"parts_used": list(parts), "share": round(share, 4),
                              "parts": {k: round(v, 4) for k, v in sorted(split_shares.items())}}
    return share


def _share(kind: str, tl: Timeline, stats: dict[str, Stat], stall_names: tuple[str, ...], im: np.ndarray,
           base: np.ndarray, lat_frac: float | None, ev: dict[str, Any]) -> float | None:
    if lat_frac is None:
        return None
    if kind == "gpu_throttle":
        st = stats.get("gpu_sm_clock")
        if st is None or not st.baseline:
            return None
        lost = max(0.0, 1 - st.incident / st.baseline)
        ev["clock_lost_fraction"] = round(lost, 4)
        return float(np.clip(lost / lat_frac, 0, 1))
    if kind == "memory_pressure" and "major_faults" in stats and stats["major_faults"].confidence >= PRESENT:
        stall_names = stall_names + ("dstate_time",)  # major faults sleep in D state waiting for the read
    if not stall_names:
        return None
    fi, fb = _stall_fraction(tl, stall_names, im), _stall_fraction(tl, stall_names, base)
    psi = {"cpu_contention": "psi_cpu", "memory_pressure": "psi_memory", "io_wait": "psi_io"}.get(kind)
    if fi is None and psi:  # no sched table: the host's pressure stall fraction stands in
        fi, fb = _psi_fraction(tl, psi, im), _psi_fraction(tl, psi, base)
        ev["stall_source"] = psi
    if fi is None:
        return None
    fb = min(fb or 0.0, 0.99)
    # The same work stalled a fraction f of its busy time takes 1 / (1 - f) as long, so going from
    # fb to fi makes it (1 - fb) / (1 - fi) slower: predicted extra-latency fraction below.
    extra = max(0.0, 1 - (1 - min(fi, 0.999)) / (1 - fb))
    ev["stall_fraction"] = {"incident": round(fi, 4), "baseline": round(fb, 4),
                            "predicted_extra_fraction": round(extra, 4)}
    zf = _stall_fraction_z(tl, stall_names, fi, base) if "stall_source" not in ev else None
    if zf is not None:
        ev["stall_fraction"]["z"] = round(float(zf), 2)
    ev["latency_extra_fraction"] = round(lat_frac, 4)
    return float(np.clip(extra / lat_frac, 0, 1))


def fold_gil_holder_cpu(causes: list[dict[str, Any]]) -> None:
    """A GIL holder that is also the one taking the waiters' CPU: one contention, ranked as such.

    CPython's GIL holder keeps the GIL while it runs *and* while it waits for a CPU, so on the
    waiters' CPU a thread running pure Python turns their GIL wait into run-queue wait and back: had
    it run on another CPU, the time they spent behind it on the run queue would have been spent
    waiting for the GIL. When the first culprit of the incident's ``cpu_contention`` is the thread that
    ``gil_contention`` names first (same tid), the GIL cause accounts for its own share plus that
    thread's part of the run-queue share; it is scored by the sum and says so (``holder_cpu``), and
    the CPU cause stays listed, pointing at it. Nothing is folded for a lock holder (its CPU use does
    not stand in for the lock) nor when the GIL cause was not listed on its own evidence."""
    cpu = next((c for c in causes if c["kind"] == "cpu_contention"), None)
    gil = next((c for c in causes if c["kind"] == "gil_contention"), None)
    if cpu is None or gil is None or not cpu.get("culprits") or not gil.get("culprits"):
        return
    cu, gu = cpu["culprits"][0], gil["culprits"][0]
    if cu.get("tid") is None or cu.get("tid") != gu.get("tid") or cpu.get("share") is None or gil.get("share") is None:
        return
    runq = float(cpu["share"]) * float(cu.get("share") or 0)
    combined = min(1.0, float(gil["share"]) + runq)
    gil["holder_cpu"] = {"tid": cu["tid"], "gil_share": gil["share"], "runq_share": round(runq, 3),
                         "combined_share": round(combined, 3)}
    gil["share"] = round(combined, 3)
    gil["score"] = round(float(gil["confidence"]) * (0.3 + 0.7 * combined), 3)
    gil["summary"] += (f"; the holder also took their CPU: {100 * runq:.0f}% of the extra latency was run-queue "
                       f"wait behind it")
    cpu["same_culprit_as"] = "gil_contention"
    causes.sort(key=lambda c: c["score"], reverse=True)
