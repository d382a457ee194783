"""Regenerate the table references inside docs/format.md (from autoglm_trace/schema.py) and
docs/format-parquet.md (from analysis/dataset.py, the fleet dataset's Parquet schema)."""

import re
import sys
from pathlib import Path

from autoglm_trace.analysis.dataset import tables_markdown as parquet_tables_markdown
from autoglm_trace.tracer.format_doc import tables_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"
stale = []
for name, render in (("format.md", tables_markdown), ("format-parquet.md", parquet_tables_markdown)):
    path = DOCS / name
    text = path.read_text()
    new = re.sub(r"(<!-- BEGIN GENERATED TABLES -->\n).*?(<!-- END GENERATED TABLES -->)",
                 lambda m, render=render: m.group(1) + render() + "\n" + m.group(2), text, flags=re.S)
    if "--check" in sys.argv:
        if new != text:
            stale.append(f"docs/{name}")
    else:
        path.write_text(new)
if stale:
    sys.exit(f"{', '.join(stale)} stale: run 'make docs'")
