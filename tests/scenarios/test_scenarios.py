"""The scenario suite: the demo inference server under real `record`, with real injected trouble,
then `analyze` / `oom` as a user runs them. Each scenario checks that the diagnosis names the right
cause kind and the right culprit process -- and that a clean run blames nothing.

The in-tree scenarios (the server's own child process or thread is the culprit) and the expected
kinds live in tests/scenarios/cases.py, shared with the accuracy table (`make scenarios-accuracy`).

These are end-to-end (about 35-45 s each) and need root + BPF: the culprit data (who preempted us, who
did I/O, who stalled in reclaim, who was OOM-killed) comes from the kernel probes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import autoglm_trace_cmd
from tests.scenarios import cases

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.slow]

HOG = "noisy-hog"  # the demo's neighbours all carry this comm (prctl PR_SET_NAME)


def _run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*autoglm_trace_cmd(), *args], capture_output=True, text=True, timeout=timeout)


def _scenario(tmp_path_factory: pytest.TempPathFactory, incident: str, *extra: str) -> dict:
    rec = Path(tmp_path_factory.mktemp(incident)) / "rec"
    r = _run("demo", "--incident", incident, "--record", str(rec), "--no-analyze",
             "--record-arg=--no-gpu", *extra)
    assert rec.joinpath("manifest.json").exists(), f"demo did not record:\n{r.stdout}\n{r.stderr}"
    a = _run("analyze", str(rec), "--json")
    assert a.returncode == 0, a.stderr
    o = _run("oom", str(rec), "--json")
    assert o.returncode == 0, o.stderr
    return {"rec": rec, "demo": r, "analysis": json.loads(a.stdout), "oom": json.loads(o.stdout)}


def _causes(analysis: dict) -> list[dict]:
    return [c for inc in analysis["incidents"] for c in inc["causes"]]


def _explain(s: dict) -> str:
    inc = [(i["start"], i["latency_ms"], i["baseline_ms"],
            [(c["kind"], c["score"], [(u["pid"], u["comm"], u["share"]) for u in c.get("culprits", [])])
             for c in i["causes"]]) for i in s["analysis"]["incidents"]]
    return json.dumps({"incidents": inc, "findings": s["analysis"]["findings"][:8]}, indent=1, default=str)


def _top_cause(s: dict, kind: str) -> dict:
    """The first cause of the worst incident (the analysis's ``worst_first``) whose first cause is of
    `kind` (it must be ranked first somewhere)."""
    hits = [c for c in cases.worst_firsts(s["analysis"]) if c["kind"] == kind]
    assert hits, f"no incident ranked {kind} first:\n{_explain(s)}"
    return hits[0]


def test_cpu_hog_is_named(tmp_path_factory):
    s = _scenario(tmp_path_factory, "cpu-hog")
    cause = _top_cause(s, "cpu_contention")
    culprit = cause["culprits"][0]
    assert culprit["comm"] == HOG and not culprit["in_target"], _explain(s)
    assert culprit["share"] > 0.2, _explain(s)


@pytest.mark.xfail(reason="open finding (machine artefact): right kind 3/3 but right culprit 0-1/3 in the accuracy table "
                   "(docs/analysis.md): on this fast virtual disk the hog harms through the CPU and its "
                   "share is split with other processes", strict=False)
def test_io_hog_is_named(tmp_path_factory):
    """The I/O hog writes and fsyncs on the server's disk. On a fast virtual disk the server's own
    I/O barely queues behind it (its D-state time stays near zero) while the hog's CPU time hurts:
    the honest diagnosis is then CPU contention by the hog, and the raw I/O evidence must still
    name the hog as the top issuer on the server's device."""
    import pyarrow.compute as pc

    from autoglm_trace.analysis.reader import Recording

    s = _scenario(tmp_path_factory, "io-hog")
    bio = Recording(s["rec"]).table("block_io")
    server_devs = set(bio.filter(pc.fill_null(bio["in_target"], False))["dev"].to_pylist())
    assert server_devs, "the server's own block I/O was not recorded"
    others = bio.filter(pc.and_(pc.invert(pc.fill_null(bio["in_target"], False)), pc.is_in(bio["dev"], pa.array(list(server_devs)))))
    by = others.group_by("comm").aggregate([("bytes", "sum")]).sort_by([("bytes_sum", "descending")])
    assert by["comm"][0].as_py() == HOG, by.to_pylist()[:5]
    causes = _causes(s["analysis"])
    io = [c for c in causes if c["kind"] == "io_wait"]
    dstate_s = pc.sum(Recording(s["rec"]).table("sched")["offcpu_dstate_ns"]).as_py() / 1e9
    if io:
        assert any(u["comm"] == HOG for c in io for u in c["culprits"]), _explain(s)
    else:
        # No I/O cause is only honest when the server really did not wait on I/O.
        assert dstate_s < 1.0, f"server spent {dstate_s:.1f} s in D state, yet no io_wait cause:\n{_explain(s)}"
    # Whatever the cause, nothing inside the server is blamed for the neighbour's trouble.
    for c in causes:
        assert not any(u.get("in_target") for u in c.get("culprits", [])), _explain(s)


def test_memory_pressure_is_named(tmp_path_factory):
    s = _scenario(tmp_path_factory, "memory-pressure")
    kinds = {c["kind"] for c in _causes(s["analysis"])}
    assert "memory_pressure" in kinds, _explain(s)


def test_oom_kill_post_mortem(tmp_path_factory):
    s = _scenario(tmp_path_factory, "oom")
    kills = [k for k in s["oom"]["kills"] if k["in_target"]]
    assert len(kills) == 1, json.dumps(s["oom"], indent=1, default=str)
    k = kills[0]
    assert k["kind"] == "memcg" and k["limit_bytes"] and k["rss_bytes"], k
    assert k["rss_bytes"] > 0.5 * k["limit_bytes"], k
    assert k["verdict"] in ("leak", "steady_growth"), k
    m = json.loads((s["rec"] / "manifest.json").read_text())
    assert m["target"]["signal"] == 9  # the server died by SIGKILL from the OOM killer
    assert m["complete"]  # the recorder survived the kill it recorded


def test_clean_run_blames_nothing(tmp_path_factory):
    s = _scenario(tmp_path_factory, "none", *cases.IN_TREE_ARGS)
    blamed = [c for c in _causes(s["analysis"]) if c["kind"] != "unexplained" and c.get("culprits")
              and any(u["comm"] == HOG for u in c["culprits"])]
    assert not blamed, _explain(s)
    # Nothing of the server's own (a thread, a child) is blamed either.
    v = cases.judge(cases.CASES["clean"], s)
    assert v["right_culprit"], v["verdict"] + "\n" + _explain(s)
    assert not [k for k in s["oom"]["kills"] if k["in_target"]]


# gil-thread and lock-holder: 3/3 in the accuracy table (docs/analysis.md, 14:22 UTC run): strict.
@pytest.mark.parametrize("name", ["child-cpu", "child-io", "gil-thread", "lock-holder"])
def test_culprit_inside_the_tree_is_named_first(tmp_path, name):
    """The server's own child process / background thread takes the CPU, the disk, the GIL or a lock:
    the first cause of the right kind names it (pid of the child, tid of the thread) first, labelled
    with where it stands, and with no 0 % culprit listed."""
    case = cases.CASES[name]
    s = cases.record(case, tmp_path)
    v = cases.judge(case, s, case.kinds + case.tolerated)
    assert v["right_kind"] and v["right_culprit"], v["verdict"] + "\n" + cases.explain(s)
    first = v["cause"]["culprits"][0]
    if case.culprit == "child":
        assert first["where"] == "child" and "(child of the target" in first["label"], first
    else:
        assert first["where"] == "target_thread" and first["label"].startswith(f"tid {first['tid']} "), first
        expected_name = {"gil-thread": "gil-hog", "lock-holder": "kv-snapshot"}[name]
        assert first.get("thread_name") == expected_name, first  # the Python name, from the span API
    for c in cases.firsts(s["analysis"]):
        assert all(u["share"] >= 0.05 for u in c.get("culprits", [])), c["culprits"]
        rest = (c.get("attribution") or {}).get("remainder")
        if c.get("culprits") and rest:
            assert abs(sum(u["share"] for u in c["culprits"]) + rest["share"] - 1) < 0.02 or rest["share"] == 0
