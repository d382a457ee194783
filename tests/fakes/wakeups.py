"""A ``wakeups`` table row for hand-made recordings: ``tid`` of ``pid`` woken ``n`` times by ``waker``
(a thread of the same process; 0: interrupt context ``ctx``), ending ``sleep`` ns of S-state sleep."""

from __future__ import annotations

from typing import Any


def wakeup_row(ts: int, bucket: int, pid: int, tid: int, waker: int, n: int, sleep: float,
               ctx: str = "task") -> dict[str, Any]:
    return {"ts_ns": ts, "bucket_ns": bucket, "pid": pid, "tid": tid, "waker_pid": pid if waker else 0,
            "waker_tid": waker, "waker_comm": "python3" if waker else f"[{ctx}]", "waker_in_target": bool(waker),
            "waker_context": ctx, "state": "S", "count": n, "sleep_ns": int(sleep), "sleep_max_ns": int(sleep / n),
            "waker_oncpu_ns": 0}
