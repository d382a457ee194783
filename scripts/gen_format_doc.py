"""Regenerate the table reference inside docs/format.md from autoglm_trace/schema.py."""

import re
import sys
from pathlib import Path

from autoglm_trace.tracer.format_doc import tables_markdown

path = Path(__file__).resolve().parents[1] / "docs" / "format.md"
text = path.read_text()
new = re.sub(r"(<!-- BEGIN GENERATED TABLES -->\n).*?(<!-- END GENERATED TABLES -->)",
             lambda m: m.group(1) + tables_markdown() + "\n" + m.group(2), text, flags=re.S)
if "--check" in sys.argv:
    sys.exit(0 if new == text else "docs/format.md is stale: run 'make docs'")
path.write_text(new)
