"""The preemptors and wakers sched.c keeps inline in a thread's sched row (INLINE_CHARGES): how
user space finds the used slots, adds them to the map's rows, and carries their layout."""

from __future__ import annotations

import ctypes as ct

import numpy as np

from autoglm_trace.probes import kernel, libbpf
from autoglm_trace.probes.bpf_maps import ctypes_dtype


def test_used_slots_flatten_with_their_parent_rows():
    slots = np.zeros((3, 2), dtype=[("count", "u8"), ("wait_ns", "u8"), ("ptid", "u4")])
    slots[0, 0] = (1, 0, 11)
    slots[0, 1] = (0, 5, 12)   # a wait charge only: used too
    slots[2, 0] = (2, 0, 13)
    flat, rows = kernel._used_slots(slots, ("count", "wait_ns"))
    assert flat["ptid"].tolist() == [11, 12, 13]
    assert rows.tolist() == [0, 0, 2]


def test_merge_adds_one_row_per_key():
    # Two threads of one process preempted by the same task on one CPU (inline in each thread's
    # row), plus the map's row for the same key: one preemptions row.
    cols = {"bucket": np.array([7, 7, 7, 8]), "tgid": np.array([1, 1, 1, 1]), "ptid": np.array([9, 9, 9, 9]),
            "count": np.array([1, 2, 4, 8], dtype=np.uint64), "in_target": np.array([0, 1, 0, 0], dtype=np.uint32),
            "comm": np.array([b"hog", b"hog", b"hog", b"hog"])}
    out = kernel._merge(cols, ("bucket", "tgid", "ptid"), add=("count",), most=("in_target",))
    assert out["bucket"].tolist() == [7, 8]
    assert out["count"].tolist() == [7, 8]
    assert out["in_target"].tolist() == [1, 0]
    assert out["comm"].tolist() == [b"hog", b"hog"]
    single = {k: v[:1] for k, v in cols.items()}
    assert kernel._merge(single, ("bucket",), add=("count",)) is single


def test_an_array_of_structs_keeps_its_layout_from_loader_to_recorder():
    class Slot(ct.Structure):
        _fields_ = [("ptid", ct.c_uint32), ("pad", ct.c_uint32), ("count", ct.c_uint64),
                    ("comm", ct.c_char * 16)]

    class Val(ct.Structure):
        _fields_ = [("vol", ct.c_uint64), ("pre", Slot * 2), ("comm", ct.c_char * 16)]

    dt = ctypes_dtype(Val)
    assert dt.itemsize == ct.sizeof(Val)
    back = libbpf.dtype_from_json(libbpf.dtype_to_json(dt))
    assert back == dt
    v = Val()
    v.pre[1].ptid, v.pre[1].count, v.pre[1].comm = 42, 3, b"hog"
    arr = np.frombuffer(bytes(v), dtype=back)
    assert arr["pre"]["ptid"][0].tolist() == [0, 42]
    assert arr["pre"]["comm"][0, 1] == b"hog"
