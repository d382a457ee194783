"""Struct member offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).

bcc compiles against whatever kernel headers ``/lib/modules/$(uname -r)/build`` points at; on hosts
where that is only the *nearest* distribution package (this VM: 6.12 headers, 6.18 kernel),
``task->tgid`` compiled from those headers reads the wrong bytes. The probes therefore never
dereference kernel structs through header definitions: they read ``*(type *)((char *)task + OFF)``
with ``OFF`` taken from the running kernel's own BTF here and passed in as ``#define``s -- the
"CO-RE by hand" that libbpf does with relocations.

Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst (header, type section, string
section; type ids start at 1; struct member offsets are in bits, with kind_flag meaning the top 8
bits hold a bitfield size).
"""

from __future__ import annotations

import os
import struct
from array import array
from functools import lru_cache
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_VOLATILE, _CONST, _RESTRICT, _FUNC, _FUNC_PROTO, _VAR, _DATASEC = 9, 10, 11, 12, 13, 14, 15
_FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = 16, 17, 18, 19
# Bytes that follow the 12-byte struct btf_type, per kind (fixed part, per-vlen part).
_EXTRA = {
    _INT: (4, 0), _ARRAY: (12, 0), _STRUCT: (0, 12), _UNION: (0, 12), _ENUM: (0, 8),
    _FUNC_PROTO: (0, 8), _VAR: (4, 0), _DATASEC: (0, 12), _DECL_TAG: (4, 0), _ENUM64: (0, 12),
}
_MODIFIERS = {_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG}


class BTFError(Exception):
    pass


class BTF:
    """Just enough of a BTF reader to resolve ``struct.member[.member]`` byte offsets.

    Kept small: one 4-byte position per type (vmlinux has ~130k types), names looked up on demand
    by their string-section offset -- the recorder's peak RSS includes whatever this builds."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BTFError("BTF blob too short")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            "<HBBIIIII", data, 0
        )
        if magic != 0xEB9F:
            raise BTFError(f"bad BTF magic {magic:#x}")
        self._data = data
        self._str_base, self._str_len = hdr_len + str_off, str_len
        self._pos = array("I", [0])  # id 0 = void
        self._named: dict[tuple[int, str], list[int]] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack = struct.Struct("<III").unpack_from
        while pos < end:
            _name_off, info, _size_type = unpack(data, pos)
            self._pos.append(pos)
            fixed, per = _EXTRA.get((info >> 24) & 0x1F, (0, 0))
            pos += 12 + fixed + per * (info & 0xFFFF)

    def _type(self, tid: int) -> tuple[int, int, int, int, int, int]:
        """(kind, vlen, size_or_type, offset of the trailing data, kind_flag, name_off)."""
        if tid == 0:
            return (0, 0, 0, 0, 0, 0)
        pos = self._pos[tid]
        name_off, info, size_type = struct.unpack_from("<III", self._data, pos)
        return (info >> 24) & 0x1F, info & 0xFFFF, size_type, pos + 12, info >> 31, name_off

    def _str(self, off: int) -> str:
        start = self._str_base + off
        end = self._data.index(b"\0", start)
        return self._data[start:end].decode()

    def _name_offsets(self, name: str) -> set[int]:
        """String-section offsets at which ``name`` is stored as a whole string."""
        strings = memoryview(self._data)[self._str_base : self._str_base + self._str_len].tobytes()
        needle, out, at = name.encode() + b"\0", set(), 0
        while (at := strings.find(needle, at)) >= 0:
            if at == 0 or strings[at - 1] == 0:
                out.add(at)
            at += 1
        return out

    def _ids_named(self, kinds: tuple[int, ...], name: str) -> list[int]:
        key = (kinds[0], name)
        if key not in self._named:
            offs = self._name_offsets(name)
            ids = []
            unpack = struct.Struct("<II").unpack_from
            for tid in range(1, len(self._pos)):
                name_off, info = unpack(self._data, self._pos[tid])
                if name_off in offs and (info >> 24) & 0x1F in kinds:
                    ids.append(tid)
            self._named[key] = ids
        return self._named[key]

    def _strip(self, tid: int) -> int:
        while self._type(tid)[0] in _MODIFIERS:
            tid = self._type(tid)[2]
        return tid

    def struct_id(self, name: str) -> int:
        ids = self._ids_named((_STRUCT, _UNION), name)
        if ids:
            # A name can appear as a forward declaration too; take the one with members.
            return max(ids, key=lambda i: self._type(i)[1])
        raise BTFError(f"struct {name} not in BTF")

    def _members(self, tid: int) -> list[tuple[str, int, int]]:
        kind, vlen, _size, extra, kflag, _n = self._type(tid)
        out = []
        for i in range(vlen):
            name_off, mtype, moff = struct.unpack_from("<III", self._data, extra + 12 * i)
            bits = moff & 0xFFFFFF if kflag else moff
            out.append((self._str(name_off) if name_off else "", mtype, bits))
        return out

    def _find(self, tid: int, member: str) -> tuple[int, int] | None:
        """(bit offset, type id) of ``member``, descending into anonymous structs / unions."""
        for name, mtype, bits in self._members(tid):
            if name == member:
                return bits, mtype
            if not name:
                inner = self._strip(mtype)
                if self._type(inner)[0] in (_STRUCT, _UNION):
                    hit = self._find(inner, member)
                    if hit is not None:
                        return bits + hit[0], hit[1]
        return None

    def offsetof(self, struct_name: str, path: str) -> int:
        """Byte offset of ``path`` (``a.b.c``, following embedded structs, not pointers)."""
        tid = self.struct_id(struct_name)
        total = 0
        for part in path.split("."):
            hit = self._find(tid, part)
            if hit is None:
                raise BTFError(f"struct {struct_name} has no member {path}")
            bits, mtype = hit
            if bits % 8:
                raise BTFError(f"{struct_name}.{path} is a bitfield")
            total += bits // 8
            tid = self._strip(mtype)
        return total

    def has_typedef(self, name: str) -> bool:
        return bool(self._ids_named((_TYPEDEF,), name))

    def sizeof(self, struct_name: str) -> int:
        return self._type(self.struct_id(struct_name))[2]

    def enum_value(self, enum_name: str, member: str) -> int:
        for tid in self._ids_named((_ENUM, _ENUM64), enum_name):
            kind, vlen, _s, extra, _f, _n = self._type(tid)
            step = 8 if kind == _ENUM else 12
            for i in range(vlen):
                name_off, val = struct.unpack_from("<Ii", self._data, extra + step * i)
                if self._str(name_off) == member:
                    return val
        raise BTFError(f"enum {enum_name} has no {member}")


def kernel_btf() -> BTF:
    try:
        return BTF(VMLINUX.read_bytes())
    except OSError as e:
        raise BTFError(f"cannot read {VMLINUX} ({e.strerror}); the kernel needs CONFIG_DEBUG_INFO_BTF=y") from None


# The task_struct members the probes read, as (macro, member path).
TASK_FIELDS = (
    ("OFF_TASK_PID", "pid"),
    ("OFF_TASK_TGID", "tgid"),
    ("OFF_TASK_COMM", "comm"),
    ("OFF_TASK_EXIT_CODE", "exit_code"),
    ("OFF_TASK_NVCSW", "nvcsw"),
    ("OFF_TASK_NIVCSW", "nivcsw"),
    ("OFF_TASK_MIN_FLT", "min_flt"),
    ("OFF_TASK_MAJ_FLT", "maj_flt"),
    ("OFF_TASK_REAL_PARENT", "real_parent"),
)
# Read when the kernel has them: task->sched_info exists with CONFIG_SCHED_INFO (include/linux/sched.h);
# without it the sched family records no run-queue wait (sched.c sched_info_read).
OPTIONAL_TASK_FIELDS = (
    ("OFF_TASK_SI_PCOUNT", "sched_info.pcount"),
    ("OFF_TASK_SI_RUN_DELAY", "sched_info.run_delay"),
)


def task_offsets(btf: BTF | None = None) -> dict[str, int]:
    """``{macro: byte offset}`` for every task_struct member the BPF programs read."""
    if btf is None:
        return dict(_kernel_task_offsets())
    out = {macro: btf.offsetof("task_struct", path) for macro, path in TASK_FIELDS}
    try:  # all or none: sched.c reads them as one pair
        out.update({macro: btf.offsetof("task_struct", path) for macro, path in OPTIONAL_TASK_FIELDS})
    except BTFError:
        pass
    return out


# What the typed fast path of the sched programs needs (probes/bpf/common.h HAVE_TASK_STORAGE):
# BTF-typed tracepoints (tp_btf, 5.5: the kernel's btf_trace_<event> typedefs), task storage (5.11)
# and bpf_get_current_task_btf (5.11). The enums are the kernel's own uapi ones, as compiled in.
TYPED_NEEDS = (
    ("typedef", "btf_trace_sched_switch", "BTF-typed tracepoints (tp_btf)"),
    ("bpf_map_type", "BPF_MAP_TYPE_TASK_STORAGE", "task storage maps"),
    ("bpf_func_id", "BPF_FUNC_get_current_task_btf", "bpf_get_current_task_btf"),
)
TYPED_OFF_ENV = "AUTOGLM_TRACE_UNTYPED"  # set (to anything but "" / "0"): take the raw path anyway


def typed_problem(btf: BTF | None = None) -> str | None:
    """Why the sched programs cannot take the typed path here (None: they can)."""
    if os.environ.get(TYPED_OFF_ENV, "") not in ("", "0"):
        return f"{TYPED_OFF_ENV} is set"
    if btf is None:
        return _kernel_facts()[1]
    for kind, name, what in TYPED_NEEDS:
        try:
            ok = btf.has_typedef(name) if kind == "typedef" else (btf.enum_value(kind, name), True)[1]
        except BTFError:
            ok = False
        if not ok:
            return f"no {what} in this kernel ({name} not in its BTF)"
    return None


@lru_cache(maxsize=1)
def _kernel_facts() -> tuple[dict[str, int], str | None]:
    # One parse for both; the parsed blob is dropped once they are known.
    btf = kernel_btf()
    return task_offsets(btf), typed_problem(btf)


def _kernel_task_offsets() -> dict[str, int]:
    return dict(_kernel_facts()[0])
