"""The culprits' "beyond the baseline" is the cause's: the incident's own baseline windows (every
incident and its margin left out), not everything outside the incident -- else a big incident
elsewhere in the recording raises the baseline and a smaller one's extra wait reads as none (its
cause then said 26x while its culprits said 0 ms extra). And incidents rank by how much they hurt."""

from __future__ import annotations

from autoglm_trace.analysis import culprits
from autoglm_trace.analysis.diagnosis import diagnose, worst_summary
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.render import render_diagnosis
from autoglm_trace.analysis.spikes import Incident, impact, rank_and_cap
from autoglm_trace.analysis.timeline import baseline_rows
from tests.fakes.synthetic import CULPRITS, Scenario, write_recording

S = 1_000_000_000


def test_cpu_culprits_measure_extra_against_the_given_baseline(tmp_path):
    # A long hog incident; the "incident" asked about is one second of it, as a blip beside a big
    # incident would be: the rest of the hog's time must not count as its baseline.
    truth = write_recording(tmp_path / "rec", Scenario(kind="cpu", seed=2, incident_len_s=20, duration_s=60))
    rec = Recording(tmp_path / "rec")
    a0, b0 = truth["incident"]
    a, b = a0 + 5 * S, a0 + 6 * S
    clean = [(rec.start_ns, a0 - 2 * S), (b0 + 2 * S, rec.end_ns)]
    own = culprits.cpu_culprits(rec, a, b, 0, clean)
    outside = culprits.cpu_culprits(rec, a, b, 0, None)
    assert own["culprits"][0]["pid"] == CULPRITS["cpu"][0]
    # Against the clean windows nearly all of the second's wait is extra ...
    assert own["extra_wait_ms"] >= 0.95 * own["total_wait_ms"], own
    # ... against "everything outside it" a third of the hog's own time is baseline.
    assert outside["extra_wait_ms"] < 0.8 * own["extra_wait_ms"], outside


def test_baseline_rows_is_the_windows_given():
    import numpy as np

    class R:
        start_ns, end_ns = 0, 100

    ts = np.arange(100)
    m, span = baseline_rows(R(), ts, 40, 50, [(0, 10), (90, 100)])
    assert m.sum() == 20 and span == 20
    m, span = baseline_rows(R(), ts, 40, 50, None)
    assert m.sum() == 89 and span == 90


def _inc(start: int, n: int, extra: float) -> Incident:
    return Incident(start_ns=start, end_ns=start + S, kind="latency", n_requests=n, extra_ms=extra)


def test_impact_ranks_an_outage_above_a_blip_and_caps_by_it():
    blip, outage = _inc(0, 3, 100.0), _inc(5 * S, 38, 500.0)
    assert impact(outage) == (19000.0, "ms") and impact(blip) == (300.0, "ms")
    kept, dropped = rank_and_cap([blip, outage, _inc(9 * S, 2, 50.0)], limit=2)
    assert kept == [blip, outage] and dropped == 1  # time order kept


def test_diagnosis_lists_worst_first_and_names_it_first(tmp_path):
    write_recording(tmp_path / "rec", Scenario(kind="cpu", seed=1))
    d = diagnose(Recording(tmp_path / "rec"))
    assert sorted(d["worst_first"]) == [i["id"] for i in d["incidents"]]
    impacts = {i["id"]: i["impact"] for i in d["incidents"]}
    assert [impacts[i] for i in d["worst_first"]] == sorted(impacts.values(), reverse=True)
    assert all(i["impact_unit"] == "ms" for i in d["incidents"])
    assert d["worst"]["id"] == d["worst_first"][0]
    # Two incidents: the worst one leads the terminal output, with its culprit.
    incs = [*d["incidents"], dict(d["incidents"][0], id=2, impact=1.0)]
    two = dict(d, incidents=incs, worst_first=[1, 2], worst={"id": 1, "summary": worst_summary(incs, [1, 2])})
    text = render_diagnosis(two)
    worst = next(line for line in text.splitlines() if line.startswith("Worst:"))
    assert "incident 1 " in worst and "stress-ng" in worst and "of 2 incidents" in worst


def test_a_thread_that_barely_ran_is_not_a_culprit(tmp_path):
    """A thread of the tree seen for the first time is a newcomer and may be named -- unless it ran
    less than MIN_SHARE of the wait to explain: nobody waits behind a thread longer than it runs."""
    from tests.fakes.synthetic import ROOT_PID

    truth = write_recording(tmp_path / "rec", Scenario(kind="cpu", seed=4))
    rec = Recording(tmp_path / "rec")
    a, b = truth["incident"]
    ghost = ("tid", ROOT_PID, 999_999)  # never in `sched`: it ran 0 ns in the window
    shares = {ghost: 0.3, ("comm", "stress-ng"): 0.7}
    assert culprits._drop_regulars(rec, dict(shares), a, b, None, 0.0) == 0.0  # no wait given: kept
    kept = dict(shares)
    assert culprits._drop_regulars(rec, kept, a, b, None, 1e9) == 0.3
    assert kept == {ghost: 0.0, ("comm", "stress-ng"): 0.7}
