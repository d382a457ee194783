"""Where a culprit stands: the recorded process tree, thread names, and the one label function.

A culprit is a process or a thread. ``Tree.locate`` says where it stands relative to the target --
the target process itself, one of its threads, a child (or deeper descendant) of the target, or
outside the target -- and ``label`` turns that into the words every view prints:

    pid 4242 python3 (child of the target 4200)
    tid 4213 "tok-worker" of the target 4200
    pid 977 stress-ng (outside the target)

Thread names: the kernel comm (what ``sched`` / ``wakeups`` record), and the Python thread name where
the server uses the span API (``thread_names`` table, sent by ``probes/span_client.py``).
Other placements (container, pod, systemd unit, user) extend ``locate`` / ``label`` here, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from autoglm_trace.analysis.reader import Recording

# Kernel threads (children of kthreadd, pid 2) and the idle task (pid 0) have no user space.
KTHREADD = 2
KERNEL_COMMS = ("kworker/", "ksoftirqd/", "migration/", "rcu_", "kswapd", "swapper/", "irq/", "kthreadd",
                "khugepaged", "kcompactd", "jbd2/", "idle_inject/", "cpuhp/", "watchdog/")


@dataclass
class Tree:
    root: int | None
    parent: dict[int, int] = field(default_factory=dict)
    comm: dict[int, str] = field(default_factory=dict)
    in_target: set[int] = field(default_factory=set)
    thread_name: dict[int, str] = field(default_factory=dict)  # tid -> Python thread name
    python: set[int] = field(default_factory=set)  # pids whose command runs a Python interpreter

    def is_kernel(self, pid: int, comm: str | None = None) -> bool:
        if pid in (0, KTHREADD) or self.parent.get(pid) == KTHREADD:
            return True
        # Outside the target the parent is not recorded: kernel threads' comms are their mark.
        return pid not in self.in_target and bool(comm) and str(comm).startswith(KERNEL_COMMS)

    def depth(self, pid: int) -> int | None:
        """Generations below the target root (0: the root itself), None when not under it."""
        seen = 0
        p: int | None = pid
        while p is not None and seen < 64:
            if p == self.root:
                return seen
            p = self.parent.get(p)
            seen += 1
        return None

    def locate(self, pid: int, tid: int | None = None, in_target: bool | None = None) -> str:
        """``target`` | ``target_thread`` | ``child`` | ``descendant`` | ``target_tree`` | ``outside``."""
        inside = pid in self.in_target if in_target is None else bool(in_target or pid in self.in_target)
        d = self.depth(pid) if self.root is not None else None
        if d == 0:
            return "target_thread" if tid is not None and tid != pid else "target"
        if d == 1:
            return "child"
        if d is not None:
            return "descendant"
        return "target_tree" if inside else "outside"


def load(rec: Recording) -> Tree:
    root = (rec.target or {}).get("pid")
    tree = Tree(root if isinstance(root, int) else None)
    if rec.has("processes") and rec.table("processes").num_rows:
        t = rec.table("processes")
        for r in t.select(["pid", "ppid", "comm", "cmdline"]).to_pylist():
            pid = int(r["pid"])
            tree.in_target.add(pid)
            if r.get("ppid") is not None:
                tree.parent[pid] = int(r["ppid"])
            if r.get("comm"):
                tree.comm[pid] = r["comm"]
            if "python" in (r.get("cmdline") or "").split(" ")[0] or "python" in (r.get("comm") or ""):
                tree.python.add(pid)
    if rec.has("proc_events") and rec.table("proc_events").num_rows:
        t = rec.table("proc_events")
        forks = t.filter(pc.equal(t.column("event"), "fork"))
        for r in forks.select(["pid", "ppid", "comm"]).to_pylist():
            tree.in_target.add(int(r["pid"]))
            if r.get("ppid"):
                tree.parent.setdefault(int(r["pid"]), int(r["ppid"]))
            if r.get("comm"):
                tree.comm.setdefault(int(r["pid"]), r["comm"])
    if tree.root is not None:
        tree.in_target.add(tree.root)
        if (rec.target or {}).get("command") and "python" in str((rec.target or {}).get("command", [""])[0]):
            tree.python.add(tree.root)
    if rec.has("thread_names") and rec.table("thread_names").num_rows:
        t = rec.table("thread_names").sort_by("ts_ns")
        tids = t.column("tid").to_numpy(zero_copy_only=False).astype(np.int64)
        for tid, name, pid in zip(tids.tolist(), t.column("name").to_pylist(), t.column("pid").to_pylist(),
                                  strict=False):
            if name:
                tree.thread_name[int(tid)] = name  # later rows win (a thread renamed itself)
                if pid is not None:
                    tree.python.add(int(pid))  # only a Python process reports thread names
    return tree


def where_words(tree: Tree, place: str) -> str:
    root = tree.root
    return {
        "target": "the target",
        "target_thread": f"of the target {root}",
        "child": f"child of the target {root}",
        "descendant": f"descendant of the target {root}",
        "target_tree": "in the target",
        "outside": "outside the target",
    }.get(place, place)


def label(tree: Tree, c: dict[str, Any]) -> str:
    """The words for a culprit dict (keys ``pid``, optional ``tid``, ``comm``, ``thread_name``,
    ``where``). Threads are named ``tid N "name" of the target P``; processes ``pid N comm (where)``."""
    place = c.get("where") or tree.locate(int(c["pid"]), c.get("tid"), c.get("in_target"))
    if c.get("tid") is not None or place == "target_thread":
        name = c.get("thread_name") or c.get("comm") or "?"
        where = where_words(tree, place)
        if place in ("target", "target_thread"):
            return f'tid {c["tid"]} "{name}" of the target {c["pid"]}'
        return f'tid {c["tid"]} "{name}" of pid {c["pid"]} ({where})'
    comm = c.get("comm") or tree.comm.get(int(c["pid"])) or "?"
    return f"pid {c['pid']} {comm} ({where_words(tree, place)})"


def describe(tree: Tree, c: dict[str, Any]) -> dict[str, Any]:
    """``c`` with ``where`` and ``label`` filled in (kernel threads marked ``kernel_thread``)."""
    pid = int(c["pid"])
    c["where"] = c.get("where") or tree.locate(pid, c.get("tid"), c.get("in_target"))
    if c["where"] == "target" and c.get("tid") is not None:
        c["where"] = "target_thread"  # the main thread (tid == pid) named as a thread
    c["in_target"] = c["where"] != "outside"
    if c.get("tid") is not None and "thread_name" not in c and int(c["tid"]) in tree.thread_name:
        c["thread_name"] = tree.thread_name[int(c["tid"])]
    if tree.is_kernel(pid, c.get("comm")):
        c["kernel_thread"] = True
    c["label"] = label(tree, c)
    return c


def victims(rec: Recording, tree: Tree | None = None) -> set[int]:
    """The target processes whose waiting is the trouble: the target's root process and those that
    emitted request spans, so that the tree's other processes (a worker the server forked) can be
    culprits; without spans, every process of the target."""
    tree = tree or load(rec)
    root = {tree.root} if tree.root is not None else set()
    if rec.has("spans") and rec.table("spans").num_rows:
        pids = {int(p) for p in rec.table("spans").column("pid").drop_null().to_pylist() if p}
        if pids:
            return pids | root
    return set(tree.in_target) | root


def request_threads(rec: Recording) -> set[int]:
    """Threads that emitted request spans (the span API records the thread): the request threads."""
    if not rec.has("spans") or not rec.table("spans").num_rows:
        return set()
    return {int(t) for t in rec.table("spans").column("tid").drop_null().to_pylist() if t}

