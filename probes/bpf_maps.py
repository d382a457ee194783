"""Reading BPF maps in bulk: a hash map drained into numpy structured arrays per interval, by fd."""

from __future__ import annotations

import ctypes as ct
import errno
from typing import Any

import numpy as np

from autoglm_trace.probes import libbpf
from autoglm_trace.probes.libbpf import Map


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
            if base in (ct.c_char, ct.c_byte, ct.c_ubyte) and fname == "comm":
                fmt: Any = f"S{ftype._length_}"
            elif issubclass(base, ct.Structure):  # an array of structs (sched.c's inline slots)
                fmt = (ctypes_dtype(base), (ftype._length_,))
            else:
                fmt = (np.dtype(base), (ftype._length_,))
        elif issubclass(ftype, ct.Structure):
            fmt = ctypes_dtype(ftype)
        else:
            fmt = np.dtype(ftype)
        names.append(fname)
        formats.append(fmt)
        offsets.append(desc.offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": ct.sizeof(cls)})


class MapDrainer:
    """Reads a BPF hash map with BPF_MAP_LOOKUP_BATCH into preallocated numpy structured arrays and
    deletes the selected keys with BPF_MAP_DELETE_BATCH; element-wise when the kernel refuses batches."""

    def __init__(self, m: Map) -> None:
        self.map = m
        self.n = m.max_entries
        self.keys = np.zeros(self.n, dtype=m.key_dtype)
        self.vals = np.zeros(self.n, dtype=m.value_dtype)
        self.batch_ok = True

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        total = self._read_batch() if self.batch_ok else None
        if total is None:
            self.batch_ok = False
            total = 0
            for k in self.map.all_keys():
                v = self.map.lookup(k)
                if v is None or total >= self.n:
                    continue
                self.keys[total], self.vals[total] = k, v
                total += 1
        return self.keys[:total].copy(), self.vals[:total].copy()

    def _read_batch(self) -> int | None:
        ksz, vsz = self.map.key_dtype.itemsize, self.map.value_dtype.itemsize
        kp, vp = self.keys.ctypes.data, self.vals.ctypes.data
        in_b, out_b, cnt = ct.c_uint32(0), ct.c_uint32(0), ct.c_uint32(0)
        total, first = 0, True
        while total < self.n:
            cnt.value = self.n - total
            res = libbpf.lib().bpf_map_lookup_batch(
                self.map.fd, None if first else ct.byref(in_b), ct.byref(out_b),
                kp + ksz * total, vp + vsz * total, ct.byref(cnt), None,
            )
            total += cnt.value
            if res != 0:
                if res == -errno.ENOENT:
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
        keys = np.ascontiguousarray(keys, dtype=self.map.key_dtype)
        if self.batch_ok:
            cnt = ct.c_uint32(len(keys))
            if libbpf.lib().bpf_map_delete_batch(self.map.fd, keys.ctypes.data, ct.byref(cnt), None) == 0:
                return
        for k in keys:
            self.map.delete(k)
