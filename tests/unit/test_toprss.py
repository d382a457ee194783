"""Host-mode top-RSS sampler (probes/toprss.py)."""

from __future__ import annotations

import os

from autoglm_trace.collector import SessionContext
from autoglm_trace.probes.toprss import TopRssSampler, scan_rss, select_pids
from autoglm_trace.target import TargetTree

S = 1_000_000_000


def test_select_top_growing_and_sticky():
    sticky: dict[int, int] = {}
    rss = {1: 900, 2: 800, 3: 700, 4: 10}
    assert select_pids(rss, {}, 0.0, sticky, 0, 2, 100, 60 * S) == [1, 2]
    # pid 4 grows 500 B/s: selected though small; 1 and 2 stay (top), 3 is not.
    rss2 = {1: 900, 2: 800, 3: 700, 4: 510}
    assert select_pids(rss2, rss, 1.0, sticky, S, 2, 100, 60 * S) == [1, 2, 4]
    # pid 4 stops growing: still sampled while sticky; 5 appears big and takes a top slot.
    rss3 = {1: 900, 2: 800, 3: 700, 4: 510, 5: 5000}
    assert select_pids(rss3, rss2, 1.0, sticky, 2 * S, 2, 100, 60 * S) == [1, 2, 4, 5]
    # After the sticky period, pid 4 (and 2, out of the top 2 now) leave; a dead pid leaves at once.
    rss4 = {1: 900, 2: 800, 4: 510, 5: 5000}
    assert select_pids(rss4, rss3, 1.0, sticky, 100 * S, 2, 100, 60 * S) == [1, 5]


def test_scan_rss_matches_proc_status_and_sampler_emits_rows():
    me = os.getpid()
    big = b"z" * (32 << 20)  # noqa: F841 - resident while we look
    rss = scan_rss()
    with open(f"/proc/{me}/status") as f:
        vmrss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert abs(rss[me] - vmrss) <= 4 << 20
    assert all(v > 0 for v in rss.values())
    rows: dict[str, list] = {}
    ctx = SessionContext(emit_rows=lambda t, r: rows.setdefault(t, []).extend(r), emit_columns_fn=lambda *_: None,
                         emit_batch_fn=lambda *_: None, target=TargetTree.for_host())
    s = TopRssSampler({"top_n": 3})
    s.start(ctx)
    s.sample(10 * S)
    s.sample(10 * S + 1)  # not due yet (once a second): nothing more
    top3 = sorted(rss, key=rss.__getitem__, reverse=True)[:3]
    got = {r["pid"] for r in rows["proc_samples"]}
    assert len(rows["proc_samples"]) == len(got) >= 2
    assert got <= set(scan_rss()) | set(top3) and len(got & set(top3)) >= 2
    assert {r["pid"] for r in rows["processes"]} == got
    assert all(r["ts_ns"] == 10 * S for r in rows["proc_samples"])
