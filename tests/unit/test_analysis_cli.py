"""The analyze / oom / diff subcommands end to end through the CLI dispatcher."""

from __future__ import annotations

import json

import pytest

from autoglm_trace.tracer import cli
from tests.fakes.synthetic import WALL_OFFSET_NS, Scenario, write_recording


@pytest.fixture(scope="module")
def recs(tmp_path_factory):
    d = tmp_path_factory.mktemp("recs")
    write_recording(d / "cpu", Scenario(kind="cpu", seed=7))
    write_recording(d / "clean", Scenario(kind="clean", seed=7))
    write_recording(d / "oom", Scenario(kind="leak_oom", duration_s=120, seed=7))
    write_recording(d / "nospans", Scenario(kind="memory", seed=7, spans=False))
    return d


def test_analyze_text_names_culprit_first(recs, capsys):
    assert cli.main(["analyze", str(recs / "cpu")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    inc = next(i for i, ln in enumerate(lines) if ln.startswith("Incident 1"))
    assert inc <= 3 and "cpu_contention" in lines[inc] and "pid 4242" in lines[inc]


def test_analyze_json(recs, capsys):
    assert cli.main(["analyze", str(recs / "cpu"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["incidents"][0]["causes"][0]["culprits"][0]["pid"] == 4242


def test_analyze_with_latency_log(recs, tmp_path, capsys):
    from autoglm_trace.analysis.reader import Recording

    spans = Recording(recs / "cpu").table("spans").to_pylist()
    log = tmp_path / "lat.jsonl"
    with log.open("w") as f:
        for s in spans:
            f.write(json.dumps({"start": (s["ts_ns"] + WALL_OFFSET_NS) / 1e9, "end": (s["end_ns"] + WALL_OFFSET_NS) / 1e9,
                                "output_tokens": s["output_tokens"], "name": "generate"}) + "\n")
        f.write("not json\n")
    assert cli.main(["analyze", str(recs / "cpu"), "--latency", str(log), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert "latency_log" in d["requests"]["sources"]
    assert d["incidents"][0]["causes"][0]["kind"] == "cpu_contention"
    assert any(f["kind"] == "latency_log" for f in d["findings"])


def test_analyze_without_spans_says_so(recs, capsys):
    assert cli.main(["analyze", str(recs / "nospans")]) == 0
    out = capsys.readouterr().out
    assert "memory_pressure" in out and "6161" in out and "request_latency" in out


def test_oom_and_diff(recs, capsys):
    assert cli.main(["oom", str(recs / "oom"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kills"][0]["verdict"] == "leak"
    assert cli.main(["oom", str(recs / "oom")]) == 0
    assert "memcg OOM kill" in capsys.readouterr().out
    assert cli.main(["diff", str(recs / "clean"), str(recs / "cpu"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"latency", "signals", "likely_cause", "regressed"} <= set(d)
    assert cli.main(["diff", str(recs / "clean"), str(recs / "cpu")]) == 0
    assert "p99" in capsys.readouterr().out


def test_errors_are_one_line(recs, tmp_path, capsys):
    assert cli.main(["analyze", str(tmp_path / "nope")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such recording" in err
    assert cli.main(["analyze", str(recs / "cpu"), "--latency", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert cli.main(["diff", str(recs / "cpu")]) == 2
    assert cli.main(["oom", str(tmp_path)]) == 3
