"""``summary``: what a recording holds, and the target tree's whole-life totals.

The JSON is a documented contract (docs/format.md, "summary --json"). Each total says where it came
from, best source first:

* ``kernel``: the kernel's per-task counters read at each exit (proc_events) for threads that ended,
  plus the in-kernel aggregates (sched / faults tables) for threads still running -- every thread of
  the tree from its first instruction, short-lived children included;
* ``wait4``: the rusage the kernel handed back when the spawned target was reaped (its whole life and
  every descendant it waited for);
* ``proc``: /proc counters of the sampled processes (last sample, minus the first one for processes
  that were already running when recording began) -- misses the last moments before an exit.
"""

from __future__ import annotations

from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace.analysis.reader import Recording


def _sum(t: pa.Table, col: str) -> int:
    if t.num_rows == 0:
        return 0
    v = pc.sum(t.column(col)).as_py()
    return int(v or 0)


def _proc_totals(rec: Recording) -> dict[str, float]:
    """Per-process counters from /proc samples: last value (or last - first for processes that
    predate the recording), summed over the tree."""
    s = rec.scan("proc_samples", ["pid", "ts_ns", "ctx_voluntary", "ctx_involuntary", "minflt", "majflt",
                                  "cpu_user_s", "cpu_system_s", "rss_bytes"])
    if s.num_rows == 0:
        return {}
    procs = rec.scan("processes", ["pid", "start_time_ns"])
    started_before: set[int] = set()
    if procs.num_rows:
        st = procs.column("start_time_ns").to_numpy(zero_copy_only=False)
        pids = procs.column("pid").to_numpy(zero_copy_only=False)
        started_before = {int(p) for p, t in zip(pids, st, strict=False) if t is not None and t < rec.start_ns}
    s = s.sort_by([("pid", "ascending"), ("ts_ns", "ascending")])
    pid = s.column("pid").to_numpy()
    last = np.r_[pid[1:] != pid[:-1], True]
    first = np.r_[True, pid[1:] != pid[:-1]]
    before = np.isin(pid[first], np.fromiter(started_before, dtype=pid.dtype, count=len(started_before)))
    out: dict[str, float] = {}
    for name, col in (
        ("ctx_switches_voluntary", "ctx_voluntary"),
        ("ctx_switches_involuntary", "ctx_involuntary"),
        ("page_faults_minor", "minflt"),
        ("page_faults_major", "majflt"),
    ):
        v = s.column(col).fill_null(0).to_numpy().astype(np.float64)
        out[name] = float(np.sum(v[last]) - np.sum(v[first][before]))
    cpu = (s.column("cpu_user_s").fill_null(0).to_numpy() + s.column("cpu_system_s").fill_null(0).to_numpy())
    out["cpu_seconds"] = float(np.sum(cpu[last]) - np.sum(cpu[first][before]))
    # Peak RSS of the tree: the largest per-sample sum over processes.
    ts = s.column("ts_ns").to_numpy()
    rss = s.column("rss_bytes").fill_null(0).to_numpy()
    order = np.argsort(ts, kind="stable")
    uts, idx = np.unique(ts[order], return_index=True)
    sums = np.add.reduceat(rss[order], idx) if len(idx) else np.array([0])
    out["peak_rss_bytes"] = float(sums.max()) if len(sums) else 0.0
    return out


def _kernel_counts(rec: Recording, sched: pa.Table | None, faults: pa.Table | None) -> dict[str, int]:
    """Whole-life switch and fault counts of the tree from the kernel tables.

    A thread born while recording and gone before its end is counted from the kernel's own per-task
    counters read at its exit (``proc_events`` nvcsw / nivcsw / min_flt / maj_flt), plus its final
    switch: the kernel counts a dying task's last schedule() as voluntary (kernel/sched/core.c
    __schedule: TASK_DEAD is a non-zero prev state) after sched_process_exit fired, when the thread
    has already left the probes' filter. Those counters also include faults taken in kernel mode
    (e.g. while exec loads the binary), which exceptions:page_fault_user never sees. Every other
    thread is counted from the in-kernel aggregates of the sched / faults tables.
    """
    out: dict[str, int] = {}
    exited: set[int] = set()
    ev = rec.scan("proc_events", ["event", "tid", "nvcsw", "nivcsw", "minflt", "majflt"])
    if ev.num_rows:
        born = set(pc.filter(ev["tid"], pc.equal(ev["event"], "fork")).to_pylist())
        if rec.target.get("mode") == "command" and rec.target.get("pid") is not None:
            born.add(int(rec.target["pid"]))
        dead = ev.filter(pc.and_(pc.is_in(ev["event"], value_set=pa.array(["exit", "thread_exit"])),
                                 pc.is_valid(ev["nvcsw"])))
        dead = dead.filter(pc.is_in(dead["tid"], value_set=pa.array(sorted(born), pa.int32())))
        if dead.num_rows:
            exited = set(dead["tid"].to_pylist())
            out = {"vol": _sum(dead, "nvcsw") + dead.num_rows, "invol": _sum(dead, "nivcsw"),
                   "minflt": _sum(dead, "minflt"), "majflt": _sum(dead, "majflt")}
    gone = pa.array(sorted(exited), pa.int32())

    def alive(t: pa.Table) -> pa.Table:
        return t.filter(pc.invert(pc.is_in(t["tid"], value_set=gone))) if exited else t

    if sched is not None:
        a = alive(sched)
        out["vol"] = out.get("vol", 0) + _sum(a, "switches_voluntary")
        out["invol"] = out.get("invol", 0) + _sum(a, "switches_involuntary")
    elif exited:
        out.pop("vol"), out.pop("invol")
    if faults is not None:
        a = alive(faults)
        major = _sum(a, "major")
        out["minflt"] = out.get("minflt", 0) + _sum(a, "faults") - major
        out["majflt"] = out.get("majflt", 0) + major
    elif exited:
        out.pop("minflt"), out.pop("majflt")
    return out


def totals(rec: Recording) -> dict[str, dict[str, Any]]:
    kernel_ok = (rec.collectors.get("kernel") or {}).get("status") == "ok"
    sched = rec.scan("sched", ["tid", "switches_voluntary", "switches_involuntary", "oncpu_ns"])
    faults = rec.scan("faults", ["tid", "faults", "major"])
    rusage = rec.target.get("rusage") or {}
    proc = _proc_totals(rec)
    out: dict[str, dict[str, Any]] = {}

    def pick(name: str, kernel_value: float | None, kernel_src: str) -> None:
        if kernel_value is not None:
            out[name] = {"value": kernel_value, "source": kernel_src}
        elif name in rusage:
            out[name] = {"value": rusage[name], "source": "wait4"}
        elif name in proc:
            out[name] = {"value": proc[name], "source": "proc"}
        else:
            out[name] = {"value": None, "source": None}

    has_sched = kernel_ok and rec.has("sched")
    has_faults = kernel_ok and rec.has("faults")
    k = _kernel_counts(rec, sched if has_sched else None, faults if has_faults else None)
    pick("ctx_switches_voluntary", k.get("vol"), "kernel")
    pick("ctx_switches_involuntary", k.get("invol"), "kernel")
    pick("page_faults_minor", k.get("minflt"), "kernel")
    pick("page_faults_major", k.get("majflt"), "kernel")
    # CPU: the sched_switch sums miss each task's exit path (mm teardown runs after it left the filter)
    # and a spawned target's moments before the probes attached; wait4's rusage has neither gap.
    if "cpu_seconds" in rusage:
        out["cpu_seconds"] = {"value": rusage["cpu_seconds"], "source": "wait4"}
    else:
        pick("cpu_seconds", _sum(sched, "oncpu_ns") / 1e9 if has_sched else None, "kernel")
    # Peak RSS: /proc samples see the tree's sum; wait4 gives the largest single process's peak.
    peak = proc.get("peak_rss_bytes")
    ru_peak = rusage.get("peak_rss_bytes")
    if peak is not None and (ru_peak is None or peak >= ru_peak):
        out["peak_rss_bytes"] = {"value": peak, "source": "proc"}
    elif ru_peak is not None:
        out["peak_rss_bytes"] = {"value": ru_peak, "source": "wait4"}
    else:
        out["peak_rss_bytes"] = {"value": None, "source": None}
    for name, v in out.items():
        if name != "cpu_seconds" and isinstance(v["value"], float) and v["value"].is_integer():
            v["value"] = int(v["value"])
    return out


def summarize(rec: Recording) -> dict[str, Any]:
    m = rec.manifest
    t = rec.target
    stats = rec.scan("probe_stats", ["lost"])
    lost = _sum(stats, "lost") if stats.num_rows else 0
    tables = rec.rows()
    return {
        "path": str(rec.path),
        "schema_version": m.get("schema_version"),
        "target": {
            "mode": t.get("mode"),
            "pid": t.get("pid"),
            "comm": t.get("comm"),
            "command": t.get("command"),
            "cgroup": t.get("cgroup"),
            "exit_code": t.get("exit_code"),
            "signal": t.get("signal"),
        },
        "host": m.get("host", {}),
        "start_time": m.get("start_time"),
        "end_time": m.get("end_time"),
        "start_ns": rec.start_ns,
        "end_ns": rec.end_ns,
        "duration_s": round((rec.end_ns - rec.start_ns) / 1e9, 3),
        "complete": rec.complete,
        "stop_reason": m.get("stop_reason"),
        "truncated_tables": dict(rec.truncated),
        "tables": tables,
        "collectors": {
            k: {"status": v.get("status"), "reason": v.get("reason")} for k, v in rec.collectors.items()
        },
        "lost_events": lost,
        "totals": totals(rec),
        "notes": m.get("notes", []),
        "error": m.get("error"),
    }


def render_summary(s: dict[str, Any], file: IO[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from autoglm_trace.printable import escape_markup as esc
    from autoglm_trace.signals import human_bytes

    con = Console(file=file, highlight=False)
    t = s["target"]
    who = esc(t.get("comm") or t.get("cgroup") or t.get("mode"))
    ended = ""
    if t.get("signal") is not None:
        import signal as _signal

        try:
            ended = f", killed by {_signal.Signals(t['signal']).name}"
        except ValueError:
            ended = f", killed by signal {t['signal']}"
    elif t.get("exit_code") is not None:
        ended = f", exit status {t['exit_code']}"
    state = "[green]complete[/]" if s["complete"] else "[bold yellow]INCOMPLETE[/] (recorder did not finish cleanly)"
    con.print(f"[bold]{esc(s['path'])}[/]: {who} (pid {t.get('pid')}){ended} -- {s['duration_s']:.1f} s, {state}")
    if s["truncated_tables"]:
        con.print(f"[yellow]truncated tail in: {esc(', '.join(sorted(s['truncated_tables'])))} (read up to the last whole batch)[/]")
    tot = Table(title="target tree totals", title_justify="left", box=None, pad_edge=False)
    tot.add_column("counter")
    tot.add_column("value", justify="right")
    tot.add_column("source", style="dim")
    for name, v in s["totals"].items():
        val = v["value"]
        txt = "-" if val is None else (human_bytes(val) if name.endswith("bytes") else
                                        f"{val:.2f}" if isinstance(val, float) else f"{val:,}")
        tot.add_row(esc(name), txt, esc(v["source"] or "not recorded"))
    con.print(tot)
    tab = Table(title="tables", title_justify="left", box=None, pad_edge=False)
    tab.add_column("table")
    tab.add_column("rows", justify="right")
    for name, n in s["tables"].items():
        tab.add_row(esc(name), f"{n:,}")
    con.print(tab)
    for name, c in s["collectors"].items():
        if c["status"] not in ("ok", "off"):
            con.print(f"[yellow]{esc(name)}: {esc(c['status'])}[/] -- {esc(c['reason'])}")
    lost = s["lost_events"]
    con.print(f"lost events: {'[green]0[/]' if not lost else f'[bold red]{lost:,}[/]'}")
    for n in s["notes"][:10]:
        con.print(f"[yellow]note:[/] {esc(n)}")
    if s.get("error"):
        con.print(f"[bold red]error:[/] {esc(s['error'])}")
