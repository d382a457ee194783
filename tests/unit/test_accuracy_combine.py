"""The scenario accuracy table from several shorter runs (`--combine`): every run of every part kept."""

from __future__ import annotations

import json

from tests.scenarios import accuracy


def _part(path, started, results, load):
    path.write_text(json.dumps({"results": results, "runs": 1, "started": started, "load": load}))
    return str(path)


def test_parts_make_one_table_with_every_run(tmp_path):
    ok = {"right_kind": True, "right_culprit": True, "verdict": "x", "run": 1, "load": "0.1 / 0.1 / 0.1"}
    bad = dict(ok, right_culprit=False, verdict="cpu_contention: pid 15 rcu_preempt")
    a = _part(tmp_path / "a.json", "2026-12-02T14:30:00+00:00", {"cpu-hog": [ok], "io-hog": [bad]}, ["0.2", "1.0"])
    b = _part(tmp_path / "b.json", "2026-12-02T14:40:00+00:00", {"clean": [ok], "gil-thread": [ok]}, ["0.5", "1.1"])
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n\n{accuracy.BEGIN}\nold\n{accuracy.END}\n\nafter\n")
    assert accuracy.main(["--combine", b, a, "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "old" not in text and text.startswith("intro") and text.rstrip().endswith("after")
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "/1 |" in ln]
    assert [r.split(" | ")[0][2:] for r in rows] == ["cpu-hog", "io-hog", "gil-thread", "clean"]  # cases order
    assert "| io-hog | " in text and "| 1 | 1/1 | 0/1 |" in text
    assert "in 2 consecutive parts" in text and "0.2 before and 1.0 after; 0.5 before and 1.1 after" in text
    assert "2026-12-02 14:30 UTC" in text
    assert "io-hog run 1" in text  # the disagreeing run is listed


def test_an_unreadable_part_is_one_line_not_a_traceback(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{not json")
    assert accuracy.main(["--combine", str(tmp_path / "x.json"), "--doc", str(tmp_path / "d.md")]) == 2
    assert "cannot read" in capsys.readouterr().err
