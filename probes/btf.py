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

import struct
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
    """Just enough of a BTF reader to resolve ``struct.member[.member]`` byte offsets."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BTFError("BTF blob too short")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            "<HBBIIIII", data, 0
        )
        if magic != 0xEB9F:
            raise BTFError(f"bad BTF magic {magic:#x}")
        self._data = data
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self._types: list[tuple[int, int, int, int, int]] = [(0, 0, 0, 0, 0)]  # id 0 = void
        self._by_name: dict[tuple[int, str], list[int]] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size_type = struct.unpack_from("<III", data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            tid = len(self._types)
            # (kind, vlen, size_or_type, offset of the trailing data, kind_flag)
            self._types.append((kind, vlen, size_type, pos + 12, info >> 31))
            if kind in (_STRUCT, _UNION, _ENUM, _ENUM64) and name_off:
                self._by_name.setdefault((kind, self._str(name_off)), []).append(tid)
            fixed, per = _EXTRA.get(kind, (0, 0))
            pos += 12 + fixed + per * vlen

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _strip(self, tid: int) -> int:
        while self._types[tid][0] in _MODIFIERS:
            tid = self._types[tid][2]
        return tid

    def struct_id(self, name: str) -> int:
        for kind in (_STRUCT, _UNION):
            ids = self._by_name.get((kind, name))
            if ids:
                # A name can appear as a forward declaration too; take the one with members.
                return max(ids, key=lambda i: self._types[i][1])
        raise BTFError(f"struct {name} not in BTF")

    def _members(self, tid: int) -> list[tuple[str, int, int]]:
        kind, vlen, _size, extra, kflag = self._types[tid]
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
                if self._types[inner][0] in (_STRUCT, _UNION):
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

    def sizeof(self, struct_name: str) -> int:
        return self._types[self.struct_id(struct_name)][2]

    def enum_value(self, enum_name: str, member: str) -> int:
        for kind in (_ENUM, _ENUM64):
            for tid in self._by_name.get((kind, enum_name), []):
                _k, vlen, _s, extra, _f = self._types[tid]
                step = 8 if kind == _ENUM else 12
                for i in range(vlen):
                    name_off, val = struct.unpack_from("<Ii", self._data, extra + step * i)
                    if self._str(name_off) == member:
                        return val
        raise BTFError(f"enum {enum_name} has no {member}")


@lru_cache(maxsize=1)
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


def task_offsets(btf: BTF | None = None) -> dict[str, int]:
    """``{macro: byte offset}`` for every task_struct member the BPF programs read."""
    btf = btf or kernel_btf()
    return {macro: btf.offsetof("task_struct", path) for macro, path in TASK_FIELDS}
