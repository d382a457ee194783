"""bench/benchdoc.py: the one section writer every benchmark uses for docs/benchmarks*.md."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import benchdoc  # noqa: E402
import gpu_check  # noqa: E402


def test_section_replaced_in_place_and_others_kept(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text("# T\n\nintro\n\n<!-- a:begin -->\nold a\n<!-- a:end -->\n\nmiddle\n\n<!-- b:begin -->\nold b\n<!-- b:end -->\ntail\n")
    benchdoc.replace_section(doc, "a", "new a\nline 2")
    body = doc.read_text()
    assert "old a" not in body and "new a\nline 2\n<!-- a:end -->" in body
    assert body.startswith("# T\n\nintro\n\n<!-- a:begin -->") and "middle" in body
    assert "old b" in body and body.endswith("tail\n")
    benchdoc.replace_section(doc, "a", "newer a")  # idempotent shape: one block, no blank lines piling up
    assert doc.read_text().count("<!-- a:begin -->") == 1 and "\n\n\nmiddle" not in doc.read_text()


def test_missing_section_appended_under_heading_and_new_doc_created(tmp_path: Path) -> None:
    doc = tmp_path / "new.md"
    benchdoc.replace_section(doc, "x", "body", new_doc="# New\n", heading="## X\n\n")
    assert doc.read_text() == "# New\n\n## X\n\n<!-- x:begin -->\nbody\n<!-- x:end -->\n"
    gpu_check.write_doc(doc, "gpu text")
    body = doc.read_text()
    assert body.count("<!-- gpu_check:begin -->") == 1 and "## Real-GPU check" in body and "<!-- x:end -->" in body
    gpu_check.write_doc(doc, "gpu text 2")
    assert "gpu text 2" in doc.read_text() and "gpu text\n" not in doc.read_text()


def test_section_header_carries_command_and_load() -> None:
    head = benchdoc.section_header("### T", "1.0 / 2.0 / 3.0", sudo=True)
    assert head[0] == "### T" and head[2].startswith("`sudo .venv/bin/python")
    assert "load average at the start 1.0 / 2.0 / 3.0, at the end " in head[4]
