import pyarrow as pa
import pytest

from autoglm_trace import schema


def test_every_table_has_ts_and_version_metadata():
    assert schema.TABLES, "no tables defined"
    for name, sch in schema.TABLES.items():
        assert sch.field("ts_ns").type == pa.int64(), name
        assert not sch.field("ts_ns").nullable, name
        assert schema.schema_version_of(sch) == schema.SCHEMA_VERSION, name
        assert sch.metadata[b"autoglm_trace.table"] == name.encode()
        assert schema.TABLE_DOCS[name]


def test_columns_have_docs_and_units_in_names():
    for name, sch in schema.TABLES.items():
        for f in sch:
            assert f.metadata and f.metadata.get(b"doc"), f"{name}.{f.name} has no doc"


def test_bucketed_tables_carry_bucket_length():
    for name in ("sched", "preemptions", "faults", "block_io"):
        assert "bucket_ns" in schema.TABLES[name].names


def test_unknown_table_names_the_known_ones():
    with pytest.raises(KeyError, match="known: "):
        schema.schema_for("nope")


def test_histogram_columns_are_uint32_lists():
    assert schema.TABLES["sched"].field("runq_hist").type == pa.list_(pa.uint32())
    assert schema.TABLES["block_io"].field("lat_hist").type == pa.list_(pa.uint32())
