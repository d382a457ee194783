"""Reading BPF maps in bulk: a hash map drained into numpy structured arrays per interval."""

from __future__ import annotations

import ctypes as ct
import errno
from typing import Any

import numpy as np


def ctypes_dtype(cls: type) -> np.dtype:
    """numpy dtype with the exact layout of a ctypes Structure (bcc's map Key / Leaf classes);
    numpy's own conversion guesses when the PEP 3118 format and the size disagree."""
    names, formats, offsets = [], [], []
    for fname, ftype, *_ in cls._fields_:
        if fname.startswith("__pad"):
            continue
        desc = getattr(cls, fname)
        if issubclass(ftype, ct.Array):
            base = ftype._type_
            fmt: Any = f"S{ftype._length_}" if base in (ct.c_char, ct.c_byte, ct.c_ubyte) and \
                fname == "comm" else (np.dtype(base), (ftype._length_,))
        elif issubclass(ftype, ct.Structure):
            fmt = ctypes_dtype(ftype)
        else:
            fmt = np.dtype(ftype)
        names.append(fname)
        formats.append(fmt)
        offsets.append(desc.offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": ct.sizeof(cls)})


class MapDrainer:
    """Reads a BPF hash map with BPF_MAP_LOOKUP_BATCH into preallocated arrays, viewed as numpy
    structured arrays, and deletes the selected keys with BPF_MAP_DELETE_BATCH."""

    def __init__(self, table: Any, lib: Any) -> None:
        self.table = table
        self.lib = lib
        self.n = table.max_entries
        self.keys = (table.Key * self.n)()
        self.vals = (table.Leaf * self.n)()
        self.key_dtype = ctypes_dtype(table.Key)
        self.val_dtype = ctypes_dtype(table.Leaf)
        self.batch_ok = True

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        total = self._read_batch() if self.batch_ok else None
        if total is None:
            self.batch_ok = False
            items = list(self.table.items())
            total = len(items)
            for i, (k, v) in enumerate(items[: self.n]):
                self.keys[i] = k
                self.vals[i] = v
        k = np.frombuffer(ct.string_at(self.keys, total * self.key_dtype.itemsize), self.key_dtype)
        v = np.frombuffer(ct.string_at(self.vals, total * self.val_dtype.itemsize), self.val_dtype)
        return k, v

    def _read_batch(self) -> int | None:
        ksz, vsz = ct.sizeof(self.table.Key), ct.sizeof(self.table.Leaf)
        in_b, out_b, cnt = ct.c_uint32(0), ct.c_uint32(0), ct.c_uint32(0)
        total, first = 0, True
        while total < self.n:
            cnt.value = self.n - total
            res = self.lib.bpf_lookup_batch(
                self.table.map_fd,
                None if first else ct.byref(in_b),
                ct.byref(out_b),
                ct.byref(self.keys, ksz * total),
                ct.byref(self.vals, vsz * total),
                ct.byref(cnt),
            )
            err = ct.get_errno()
            total += cnt.value
            if res != 0:
                if err == errno.ENOENT:
                    break
                return None if first else total
            in_b.value = out_b.value
            first = False
            if cnt.value == 0:
                break
        return total

    def delete(self, keys: np.ndarray) -> None:
        if not len(keys):
            return
        keys = np.ascontiguousarray(keys)
        if self.batch_ok:
            cnt = ct.c_uint32(len(keys))
            if self.lib.bpf_delete_batch(self.table.map_fd, keys.ctypes.data, ct.byref(cnt)) == 0:
                return
        raw = keys.tobytes()
        size = ct.sizeof(self.table.Key)
        for i in range(len(keys)):
            k = self.table.Key.from_buffer_copy(raw[i * size : (i + 1) * size])
            try:
                del self.table[k]
            except KeyError:
                pass

