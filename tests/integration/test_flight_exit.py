"""`record --ring -- CMD`: a spawned target's CUDA OOM text and its bad exit each save a snapshot
(no root: /proc sampler only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from autoglm_trace.analysis.reader import Recording

TARGET = (
    "import sys, time\n"
    "time.sleep(1.5)\n"
    "print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB', file=sys.stderr, flush=True)\n"
    "time.sleep(2.5)\n"
    "sys.exit(3)\n"
)


def test_cuda_oom_text_and_bad_exit_of_a_spawned_target(cli: list[str], tmp_path: Path):
    out = tmp_path / "flight"
    r = subprocess.run([*cli, "record", "--ring", "30s", "-o", str(out), "--tail", "0.5", "--no-bpf", "--no-gpu",
                        "--", sys.executable, "-c", TARGET], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    snaps = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert [p.name.rsplit("-", 1)[-1] for p in snaps] == ["exit", "exit"], (snaps, r.stderr)
    first, last = (Recording(p) for p in snaps)
    assert "CUDA out of memory" in first.manifest["trigger"]["detail"]
    assert "exit code 3" in last.manifest["trigger"]["detail"]
    assert last.manifest["flight"]["cut_short"] is True  # the session ended with the target
    assert last.manifest["target"]["exit_code"] == 3
    # Both hold the target's /proc samples from its start (the ring is longer than its life).
    for rec in (first, last):
        assert rec.complete
        pids = set(rec.table("proc_samples").column("pid").to_pylist())
        assert rec.target["pid"] in pids
    assert last.table("proc_samples").num_rows > first.table("proc_samples").num_rows
    assert "saved" in r.stderr and "stopped (target exited): 2 snapshot(s) saved" in r.stderr


def test_export_parquet_exports_each_snapshot_into_the_fleet_dataset(cli: list[str], tmp_path: Path):
    out, fleet_dir = tmp_path / "flight", tmp_path / "fleet"
    r = subprocess.run([*cli, "record", "--ring", "30s", "-o", str(out), "--tail", "0.5", "--no-bpf", "--no-gpu",
                        "--export-parquet", str(fleet_dir), "--export-host", "node-7", "--export-build", "v2",
                        "--export-label", "rack=r1", "--", sys.executable, "-c", TARGET],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    snaps = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert len(snaps) == 2 and r.stderr.count("exported ") == 2, r.stderr
    rec_ids = set()
    for f in (fleet_dir / "recordings").rglob("*.parquet"):
        rec_ids.update(pq.read_table(f).column("recording_id").to_pylist())
    assert len(rec_ids) == 2, rec_ids  # one recording per snapshot, both in the dataset
    assert list(fleet_dir.glob("proc_samples/host=node-7/date=*/*.parquet")), list(fleet_dir.rglob("*"))[:10]
    recs = [r for f in (fleet_dir / "recordings").rglob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert {r["build"] for r in recs} == {"v2"}, recs
    q = subprocess.run([*cli, "fleet", str(fleet_dir), "--json"], capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr


def test_export_parquet_must_be_a_directory(cli: list[str], tmp_path: Path):
    f = tmp_path / "file"
    f.write_text("x")
    r = subprocess.run([*cli, "record", "--ring", "30s", "-o", str(tmp_path / "o"), "--no-bpf", "--no-gpu",
                        "--export-parquet", str(f), "--", "/bin/true"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not a directory" in r.stderr
    assert not (tmp_path / "o").exists()
    r = subprocess.run([*cli, "record", "--ring", "30s", "-o", str(tmp_path / "o"), "--no-bpf", "--no-gpu",
                        "--export-label", "x=1", "--", "/bin/true"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "need --export-parquet" in r.stderr
