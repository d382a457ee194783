"""Render the column reference of docs/format.md from autoglm_trace/schema.py (the one definition).

``python -m autoglm_trace.tracer.format_doc`` prints the markdown; a unit test checks that
docs/format.md carries every table and column, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import sys

from autoglm_trace import schema


def tables_markdown() -> str:
    out: list[str] = []
    for name, sch in schema.TABLES.items():
        out.append(f"### `{name}`\n")
        out.append(schema.TABLE_DOCS[name] + "\n")
        out.append("| column | type | meaning |")
        out.append("|---|---|---|")
        for f in sch:
            doc = (f.metadata or {}).get(b"doc", b"").decode()
            null = "" if f.nullable else " (never null)"
            out.append(f"| `{f.name}` | {f.type}{null} | {doc.replace('|', '/')} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(tables_markdown())
