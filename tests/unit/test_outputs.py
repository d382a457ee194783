"""Outputs never destroy input: ``report``/``export`` refuse an existing device, FIFO or directory as
their output (a device node used to be replaced by a regular file when run as root) and any output
inside the recording they read (``report REC -o REC/manifest.json`` used to overwrite the recording),
however the path is spelled (links, ``..``)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.fakes.synthetic import Scenario, write_recording
from tests.unit.test_hostile_reader import one_line, run_cli

OUTPUT_COMMANDS = {
    "report": lambda rec, out: ["report", str(rec), "-o", str(out)],
    "export": lambda rec, out: ["export", str(rec), "--perfetto", str(out)],
}


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("good") / "rec"
    write_recording(p, Scenario(kind="clean", duration_s=6, seed=1))
    return p


@pytest.fixture
def rec(good: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "rec"
    shutil.copytree(good, dst)
    return dst


def _digest(rec: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(rec.iterdir())}


@pytest.mark.parametrize("command", list(OUTPUT_COMMANDS))
@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_existing_device_or_fifo_is_not_replaced(rec: Path, tmp_path: Path, command: str, kind: str) -> None:
    target = tmp_path / "node"
    if kind == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod of a character device needs root")
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a private /dev/null
    else:
        os.mkfifo(target)
    code, err, _ = run_cli(OUTPUT_COMMANDS[command](rec, target))
    assert code == 2, err
    assert "refusing to replace" in one_line(err)
    mode = os.lstat(target).st_mode
    assert (stat.S_ISCHR(mode) if kind == "device" else stat.S_ISFIFO(mode)), "the node was replaced"


@pytest.mark.parametrize("command", list(OUTPUT_COMMANDS))
@pytest.mark.parametrize("spelling", ["manifest", "table", "new-file", "dotdot", "link-to-rec", "rec-itself"])
def test_output_inside_the_recording_is_refused(rec: Path, tmp_path: Path, command: str, spelling: str) -> None:
    link = tmp_path / "alias"
    link.symlink_to(rec)
    out = {"manifest": rec / "manifest.json", "table": rec / "spans.arrow", "new-file": rec / "new.html",
           "dotdot": rec / ".." / "rec" / "proc_samples.arrow", "link-to-rec": link / "manifest.json",
           "rec-itself": rec}[spelling]
    before = _digest(rec)
    code, err, _ = run_cli(OUTPUT_COMMANDS[command](rec, out))
    assert code == 2, err
    line = one_line(err)
    assert "inside the recording" in line or "is a directory" in line, line
    assert _digest(rec) == before


@pytest.mark.parametrize("command", list(OUTPUT_COMMANDS))
def test_ordinary_output_beside_the_recording_works(rec: Path, tmp_path: Path, command: str) -> None:
    out = tmp_path / ("r.html" if command == "report" else "t.json")
    out.write_text("old")  # an existing regular file is replaced
    code, err, _ = run_cli(OUTPUT_COMMANDS[command](rec, out))
    assert code == 0, err
    assert out.stat().st_size > 100 and stat.S_ISREG(os.lstat(out).st_mode)
