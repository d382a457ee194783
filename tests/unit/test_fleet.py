"""The fleet dataset and the ``fleet`` command: several hosts' recordings exported to Parquet, one
with an injected CPU-contention incident, one with an OOM kill, one with a slower build; ``fleet``
must name the host, the cause and the culprit, and the regression must be on the right host."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from autoglm_trace.analysis import dataset, fleet
from autoglm_trace.analysis.fleet_render import fleet_html, render_fleet
from autoglm_trace.analysis.parquet_export import export_parquet
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.tracer import cli
from tests.cli_helpers import one_error_line
from tests.fakes.synthetic import WALL_OFFSET_NS, Scenario, write_recording
from tests.fleet_data import HOSTS, HOUR_NS, make_fleet


class Ran:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """The CLI in-process (``cli.main``, the same error path as the installed entry point)."""
    def run(*argv: str) -> Ran:
        capsys.readouterr()
        code = cli.main(list(argv))
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)
    return run


def assert_one_line_error(p: Ran, code: int) -> None:
    assert p.returncode == code, (p.returncode, p.stderr)
    one_error_line(p.stderr)


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fleet")
    make_fleet(base)
    return base / "ds"


def test_layout_keys_and_wall_clock(fleet_dir: Path) -> None:
    files = sorted(p.relative_to(fleet_dir) for p in fleet_dir.rglob("*.parquet"))
    assert Path("incidents/host=gpu-r1-02/date=2025-11-24") in {f.parent for f in files}
    for f in files:
        table, host, day, name = f.parts
        assert host.startswith("host=") and day.startswith("date=") and name.endswith(".parquet")
    t = pq.read_table(next((fleet_dir / "spans" / "host=gpu-r1-01").rglob("*.parquet")))
    assert set(t.column("host").to_pylist()) == {"gpu-r1-01"}
    assert set(t.column("boot_id").to_pylist()) == {"boot-gpu-r1-01"}
    assert len(set(t.column("recording_id").to_pylist())) == 1
    row = t.slice(0, 1).to_pylist()[0]
    # this host has two recordings (builds v1 and v2, two hours apart): either clock anchor
    off = round((row["ts"].timestamp() * 1e9 - row["ts_ns"] - WALL_OFFSET_NS) / HOUR_NS)
    assert off in (0, 2)
    assert row["ts"].timestamp() * 1e9 == pytest.approx(row["ts_ns"] + WALL_OFFSET_NS + off * HOUR_NS, abs=1000)
    assert row["end_ts"].timestamp() * 1e9 == pytest.approx(row["end_ns"] + WALL_OFFSET_NS + off * HOUR_NS, abs=1000)
    meta = t.schema.metadata
    assert meta[b"autoglm_trace.dataset_version"] == str(dataset.DATASET_VERSION).encode()
    assert meta[b"autoglm_trace.table"] == b"spans"
    # portable types: no unsigned integers anywhere
    for name in dataset.TABLES:
        for f in dataset.schema_for(name):
            assert "uint" not in str(f.type), (name, f.name)


def test_fleet_names_host_cause_and_culprit(fleet_dir: Path) -> None:
    d = fleet.fleet_report(fleet_dir)
    assert d["range"]["hosts"] == 4 and d["range"]["recordings"] == len(HOSTS)
    inc = d["incidents"]
    assert len(inc) == 1, inc
    assert (inc[0]["host"], inc[0]["cause"], inc[0]["culprit_comm"], inc[0]["culprit_pid"]) == \
        ("gpu-r1-02", "cpu_contention", "stress-ng", 4242)
    top = d["by_host"][0]
    assert (top["host"], top["incidents"], top["top_cause"], top["top_culprit"]) == \
        ("gpu-r1-02", 1, "cpu_contention", "stress-ng")
    assert all(h["incidents"] == 0 for h in d["by_host"][1:])
    assert d["top_culprits"][0]["culprit"] == "stress-ng" and d["top_culprits"][0]["hosts"] == 1
    assert [(r["host"], r["cause"], r["culprit"]) for r in d["over_time"]] == [("gpu-r1-02", "cpu_contention", "stress-ng")]
    assert d["over_time"][0]["bucket"] == "2025-11-24T16:00:00.000Z"
    assert [(o["host"], o["kind"], o["verdict"]) for o in d["oom"]] == [("gpu-r2-02", "memcg", "leak")]
    text = render_fleet(d)
    assert "gpu-r1-02" in text and "stress-ng" in text and "cpu_contention" in text


def test_regression_between_builds_names_the_host(fleet_dir: Path) -> None:
    d = fleet.fleet_report(fleet_dir, fleet.Params(compare="build", builds=("v1", "v2")))
    g = d["regression"]
    assert g["hosts_compared"] == 2  # gpu-r1-01 and gpu-r2-01 ran both builds
    reg = [h["host"] for h in g["hosts"] if h["regressed"]]
    assert reg == ["gpu-r2-01"], g
    h = g["hosts"][0]
    assert 1.3 < h["p50"]["ratio"] < 1.9


def test_regression_between_periods(fleet_dir: Path) -> None:
    # latency_hist is per minute: periods are matched by the minute a request started in
    p = fleet.Params(before=fleet.parse_period("2025-11-24T16:00..2025-11-24T16:01", "b"),
                     after=fleet.parse_period("2025-11-24T16:01..2025-11-24T16:03", "a"))
    g = fleet.fleet_report(fleet_dir, p)["regression"]
    assert g["hosts_compared"] == 4
    assert [h["host"] for h in g["hosts"] if h["regressed"]] == ["gpu-r1-02"]  # the incident is at 16:01:48


def test_since_until_filter(fleet_dir: Path) -> None:
    d = fleet.fleet_report(fleet_dir, fleet.Params(since=fleet.parse_time("2025-11-24T17:00", "s")))
    assert d["range"]["recordings"] == 2 and d["incidents"] == []


def test_two_recordings_of_one_host_and_day_stay_apart(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    for i, off in enumerate((0, 600 * 10**9)):
        write_recording(tmp_path / f"r{i}", Scenario(kind="clean", duration_s=10, hostname="h1",
                                                     wall_offset_ns=WALL_OFFSET_NS + off, seed=i))
        st = export_parquet(Recording(tmp_path / f"r{i}"), ds)
    again = export_parquet(Recording(tmp_path / "r1"), ds)  # re-export: same files, replaced
    assert sorted(again["files"]) == sorted(st["files"])
    files = list((ds / "recordings" / "host=h1" / "date=2025-11-24").iterdir())
    assert len(files) == 2
    assert fleet.fleet_report(ds)["range"]["recordings"] == 2
    assert not [p for p in ds.rglob("*") if p.name.startswith(".")]  # no temp file left


def test_recording_across_midnight_is_split_by_day(tmp_path: Path) -> None:
    # Start 30 s before midnight UTC (the synthetic epoch is 16:00).
    off = WALL_OFFSET_NS + 8 * 3600 * 10**9 - 30 * 10**9
    write_recording(tmp_path / "r", Scenario(kind="clean", duration_s=60, hostname="h", wall_offset_ns=off))
    export_parquet(Recording(tmp_path / "r"), tmp_path / "ds")
    days = sorted(p.name for p in (tmp_path / "ds" / "spans" / "host=h").iterdir())
    assert days == ["date=2025-11-24", "date=2025-11-25"]
    for day in days:
        t = pq.read_table(next((tmp_path / "ds" / "spans" / "host=h" / day).glob("*.parquet")))
        assert {str(d) for d in t.column("date").to_pylist()} == {day[5:]}
        assert {x.date().isoformat() for x in t.column("ts").to_pylist()} == {day[5:]}


def test_cli_export_and_fleet_json_html(tmp_path: Path, fleet_dir: Path, run_cli) -> None:
    write_recording(tmp_path / "r", Scenario(kind="clean", duration_s=10, hostname="x"))
    out = tmp_path / "ds"
    p = run_cli("export", str(tmp_path / "r"), "--parquet", str(out), "--host", "node-7", "--build", "b9",
                "--label", "rack=r3", "--json")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["host"] == "node-7" and st["labels"] == {"build": "b9", "rack": "r3"}
    rec = pq.read_table(next((out / "recordings").rglob("*.parquet"))).to_pylist()[0]
    assert rec["build"] == "b9" and json.loads(rec["labels"])["rack"] == "r3"
    html = tmp_path / "fleet.html"
    p = run_cli("fleet", str(fleet_dir), "--json", "--html", str(html))
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["schema"] == fleet.SCHEMA_ID and d["incidents"][0]["host"] == "gpu-r1-02"
    assert "stress-ng" in html.read_text() and "gpu-r1-02" in html.read_text()
    p = run_cli("fleet", "--sql", "top_culprits")
    assert p.returncode == 0 and p.stdout == fleet.sql_text("top_culprits")


def test_html_escapes_recorded_text(fleet_dir: Path) -> None:
    d = fleet.fleet_report(fleet_dir)
    d["incidents"][0]["culprit_comm"] = "<script>alert(1)</script>"
    d["incidents"][0]["headline"] = "<img src=x onerror=alert(1)>"
    page = fleet_html(d)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize("args,code,needle", [
    (["fleet", "/nonexistent/dir"], 3, "no such directory"),
    (["fleet"], 2, "give the directory"),
    (["fleet", "{empty}"], 3, "no exported recording"),
    (["fleet", "{ds}", "--before", "2025-11-24..2025-11-23", "--after", "2025-11-25..2025-11-26"], 2, "ends before"),
    (["fleet", "{ds}", "--before", "yesterday..today", "--after", "2025-11-25..2025-11-26"], 2, "not an ISO date"),
    (["fleet", "{ds}", "--before", "2025-11-24..2025-11-25"], 2, "go together"),
    (["fleet", "{ds}", "--builds", "v1", "v1"], 2, "two different"),
    (["fleet", "--sql", "nope"], 2, "no query named"),
    (["export", "{rec}", "--parquet", "{file}"], 2, "not a directory"),
    (["export", "{rec}", "--parquet", "{ds}", "--host", "../etc"], 2, "--host"),
    (["export", "{rec}", "--parquet", "{ds}", "--label", "novalue"], 2, "KEY=VALUE"),
    (["export", "{rec}", "--perfetto", "{file}", "--build", "x"], 2, "go with --parquet"),
    (["export", "{empty}", "--parquet", "{ds}"], 3, "empty"),
])
def test_bad_input_one_line(tmp_path: Path, args: list[str], code: int, needle: str, run_cli) -> None:
    write_recording(tmp_path / "rec", Scenario(kind="clean", duration_s=5))
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    ds = tmp_path / "ds"
    export_parquet(Recording(tmp_path / "rec"), ds)
    subs = {"{rec}": tmp_path / "rec", "{ds}": ds, "{empty}": tmp_path / "empty", "{file}": tmp_path / "file"}
    argv = [str(subs.get(a, a)) for a in args]
    p = run_cli(*argv)
    assert_one_line_error(p, code)
    assert needle in p.stderr


def test_corrupt_parquet_file_is_one_line(tmp_path: Path, run_cli) -> None:
    write_recording(tmp_path / "rec", Scenario(kind="clean", duration_s=5))
    ds = tmp_path / "ds"
    export_parquet(Recording(tmp_path / "rec"), ds)
    victim = next((ds / "latency_hist").rglob("*.parquet"))
    victim.write_bytes(b"PAR1 garbage" * 10)
    os.utime(victim)
    p = run_cli("fleet", str(ds))
    assert_one_line_error(p, 3)


def test_export_without_clock_anchor_is_refused(tmp_path: Path, run_cli) -> None:
    write_recording(tmp_path / "rec", Scenario(kind="clean", duration_s=5))
    m = json.loads((tmp_path / "rec" / "manifest.json").read_text())
    m["clock"] = {}
    (tmp_path / "rec" / "manifest.json").write_text(json.dumps(m))
    p = run_cli("export", str(tmp_path / "rec"), "--parquet", str(tmp_path / "ds"))
    assert_one_line_error(p, 3)
    assert "monotonic_to_wall_ns" in p.stderr
    assert not (tmp_path / "ds").exists() or not list((tmp_path / "ds").rglob("*.parquet"))


def test_sql_files_avoid_engine_specific_syntax() -> None:
    banned = ("read_parquet", "epoch(", "strftime", "::", "AS STRING", "AS VARCHAR", "LIMIT ", "ILIKE", "QUALIFY")
    for name in fleet.query_names():
        text = fleet.sql_text(name).upper()
        for b in banned:
            assert b.upper() not in text, (name, b)
        assert "ORDER BY" in text or name == "fleet_range", name


def test_subprocess_cli_entry_exists() -> None:
    # the flight recorder runs the export as `python -m autoglm_trace.tracer.cli export ...`
    import sys

    p = subprocess.run([sys.executable, "-m", "autoglm_trace.tracer.cli", "fleet", "--sql"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "top_culprits" in p.stdout


def test_parquet_format_doc_is_current() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "format-parquet.md").read_text()
    block = doc.split("<!-- BEGIN GENERATED TABLES -->\n", 1)[1].split("<!-- END GENERATED TABLES -->", 1)[0]
    assert block == dataset.tables_markdown() + "\n", "docs/format-parquet.md is stale: run 'make docs'"
    assert f"dataset v{dataset.DATASET_VERSION}" in doc.splitlines()[0]
