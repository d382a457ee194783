"""The scenarios, each with the cause kind and the culprit a right diagnosis names first.

Shared by the test suite (tests/scenarios/test_scenarios.py runs each once) and the accuracy table
(tests/scenarios/accuracy.py runs each N times and rewrites docs/analysis.md). A scenario is the
demo server under the real recorder (`autoglm-trace demo --record`) with one injected trouble:
outside the recorded tree (noisy neighbours, comm ``noisy-hog``) or inside it (demo/trouble.py: a
child process or a thread the server itself started, named in the demo's output).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import autoglm_trace_cmd

HOG = "noisy-hog"  # the demo's neighbours all carry this comm (prctl PR_SET_NAME)
# The in-tree trouble lasts 10 s from +10 s of a 30 s load: a clean baseline on both sides.
IN_TREE_ARGS = ("--duration", "30", "--incident-at", "10", "--incident-for", "10")


@dataclass(frozen=True)
class Case:
    name: str
    incident: str
    kinds: tuple[str, ...]  # the right kind(s), the first being the strict one for the accuracy table
    # "hog" (comm noisy-hog, outside) | "child" (pid from the demo log) | "thread" (tid) | "none" (blames
    # nobody) | "kind" (only the kind is judged: memory pressure's stalls are the victims' own)
    culprit: str
    args: tuple[str, ...] = ()
    # Kinds also accepted by the test suite (e.g. CPU contention for a GIL holder on a CPU-starved host):
    # the accuracy table still counts only ``kinds``.
    tolerated: tuple[str, ...] = field(default=())


CASES: dict[str, Case] = {c.name: c for c in (
    Case("cpu-hog", "cpu-hog", ("cpu_contention",), "hog"),
    Case("io-hog", "io-hog", ("io_wait", "cpu_contention"), "hog"),
    Case("memory-pressure", "memory-pressure", ("memory_pressure",), "kind"),
    Case("child-cpu", "child-cpu", ("cpu_contention",), "child", IN_TREE_ARGS),
    Case("child-io", "child-io", ("io_wait", "cpu_contention"), "child", IN_TREE_ARGS),
    Case("gil-thread", "gil-thread", ("gil_contention",), "thread", IN_TREE_ARGS),
    Case("lock-holder", "lock-holder", ("lock_contention",), "thread", IN_TREE_ARGS),
    Case("clean", "none", (), "none", IN_TREE_ARGS),
)}


def run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*autoglm_trace_cmd(), *args], capture_output=True, text=True, timeout=timeout)


def record(case: Case, directory: Path) -> dict[str, Any]:
    """Run the scenario into ``directory``/rec and analyse it: {rec, demo, analysis}."""
    rec = directory / "rec"
    r = run("demo", "--incident", case.incident, "--record", str(rec), "--no-analyze", "--record-arg=--no-gpu",
            *case.args)
    if not rec.joinpath("manifest.json").exists():
        raise RuntimeError(f"demo did not record:\n{r.stdout}\n{r.stderr}")
    a = run("analyze", str(rec), "--json")
    if a.returncode != 0:
        raise RuntimeError(a.stderr)
    return {"rec": rec, "demo": r, "analysis": json.loads(a.stdout)}


def truth(case: Case, demo_out: str) -> dict[str, Any]:
    """Who the culprit is, from the demo's log: {"pid": N} / {"tid": N} / {"comm": HOG} / {}."""
    if case.culprit == "hog":
        return {"comm": HOG}
    if case.culprit == "child":
        m = re.search(r"child process (\d+) \(", demo_out)
        return {"pid": int(m.group(1))} if m else {"pid": None}
    if case.culprit == "thread":
        m = re.search(r"thread (\d+) \(", demo_out)
        return {"tid": int(m.group(1))} if m else {"tid": None}
    return {}


def matches(c: dict[str, Any], want: dict[str, Any]) -> bool:
    if "comm" in want:
        return c.get("comm") == want["comm"] and c.get("where", "outside") == "outside"
    if "pid" in want:
        return c.get("pid") == want["pid"] and c.get("tid") is None
    if "tid" in want:
        return c.get("tid") == want["tid"]
    return False


def firsts(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """The first-ranked cause of every incident."""
    return [inc["causes"][0] for inc in analysis["incidents"] if inc["causes"]]


def worst_firsts(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """The first-ranked cause of every incident, the worst incident's first (the analysis's own
    ``worst_first``)."""
    order = {i: n for n, i in enumerate(analysis.get("worst_first") or [])}
    incs = sorted(analysis["incidents"], key=lambda inc: order.get(inc["id"], len(order)))
    return [inc["causes"][0] for inc in incs if inc["causes"]]


def judge(case: Case, s: dict[str, Any], kinds: tuple[str, ...] | None = None) -> dict[str, Any]:
    """{right_kind, right_culprit, verdict} for one run (the incident the analysis ranks worst among
    those whose first-ranked cause is of a right kind -- ``worst_first``, by the extra latency they
    caused; its first culprit must be the one)."""
    kinds = case.kinds if kinds is None else kinds
    an = s["analysis"]
    want = truth(case, s["demo"].stdout + s["demo"].stderr)
    if case.culprit == "none":
        blamed = [(c["kind"], u.get("label") or u.get("comm")) for c in firsts(an) if c["kind"] != "unexplained"
                  for u in c.get("culprits", []) if u.get("in_target") or u.get("comm") == HOG]
        return {"right_kind": not blamed, "right_culprit": not blamed,
                "verdict": "blamed nobody in or beside the target" if not blamed else f"blamed {blamed[:3]}"}
    hits = [c for c in worst_firsts(an) if c["kind"] in kinds]
    if case.culprit == "kind":
        return {"right_kind": bool(hits), "right_culprit": bool(hits),
                "verdict": hits[0]["kind"] if hits else f"first causes were {[c['kind'] for c in firsts(an)][:3]}"}
    right_culprit = bool(hits and hits[0].get("culprits") and matches(hits[0]["culprits"][0], want))
    if not hits:
        tops = [(c["kind"], (c.get("culprits") or [{}])[0].get("label")) for c in firsts(an)][:3]
        return {"right_kind": False, "right_culprit": False, "verdict": f"first causes were {tops}"}
    top = hits[0]
    first = (top.get("culprits") or [{}])[0]
    return {"right_kind": True, "right_culprit": right_culprit, "cause": top,
            "verdict": f"{top['kind']}: {first.get('label') or first.get('comm')} "
                       f"{100 * (first.get('share') or 0):.0f}%" + ("" if right_culprit else f" (want {want})")}


def explain(s: dict[str, Any]) -> str:
    inc = [(i["start"], i["latency_ms"], i["baseline_ms"],
            [(c["kind"], c["score"], [(u.get("label") or u.get("comm"), u["share"]) for u in c.get("culprits", [])])
             for c in i["causes"]]) for i in s["analysis"]["incidents"]]
    return json.dumps({"incidents": inc, "findings": s["analysis"]["findings"][:8]}, indent=1, default=str)
