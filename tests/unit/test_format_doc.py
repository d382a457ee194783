from pathlib import Path

from autoglm_trace import schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "format.md"


def test_format_doc_lists_every_table_and_column():
    text = DOC.read_text()
    for name, sch in schema.TABLES.items():
        assert f"### `{name}`" in text, f"docs/format.md lacks table {name}: run 'make docs'"
        section = text.split(f"### `{name}`", 1)[1].split("### ", 1)[0]
        for f in sch:
            assert f"| `{f.name}` |" in section, f"docs/format.md lacks {name}.{f.name}: run 'make docs'"
