"""BPF maps, programs and perf buffers by file descriptor, through libbpf (ctypes; no bcc, no LLVM).

The recorder gets its descriptors from the loader process (probes/bpf_loader.py) and uses only these
calls on them: element and batch map operations (tools/lib/bpf/bpf.h), object info
(BPF_OBJ_GET_INFO_BY_FD) and perf buffers (tools/lib/bpf/libbpf.h perf_buffer__new, which opens one
PERF_COUNT_SW_BPF_OUTPUT event per CPU and stores it in the BPF_MAP_TYPE_PERF_EVENT_ARRAY). libbpf is
Debian's libbpf1, which bcc's own libbcc links, so it is there wherever bcc is. libbpf >= 1.0 returns
-errno from every call.
"""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


class LibbpfMissing(RuntimeError):
    pass


_LIB: Any = None


def lib() -> Any:
    global _LIB
    if _LIB is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            so = ct.CDLL(name, use_errno=True)
        except OSError as e:
            raise LibbpfMissing(f"libbpf not found ({e}): install libbpf1") from None
        vp, u32p = ct.c_void_p, ct.POINTER(ct.c_uint32)
        for fn, res, args in (
            ("bpf_map_lookup_elem", ct.c_int, [ct.c_int, vp, vp]),
            ("bpf_map_update_elem", ct.c_int, [ct.c_int, vp, vp, ct.c_uint64]),
            ("bpf_map_delete_elem", ct.c_int, [ct.c_int, vp]),
            ("bpf_map_get_next_key", ct.c_int, [ct.c_int, vp, vp]),
            ("bpf_map_lookup_batch", ct.c_int, [ct.c_int, vp, vp, vp, vp, u32p, vp]),
            ("bpf_map_delete_batch", ct.c_int, [ct.c_int, vp, u32p, vp]),
            ("bpf_obj_get_info_by_fd", ct.c_int, [ct.c_int, vp, u32p]),
            ("bpf_enable_stats", ct.c_int, [ct.c_int]),
            ("bpf_prog_get_next_id", ct.c_int, [ct.c_uint32, u32p]),
            ("libbpf_num_possible_cpus", ct.c_int, []),
            ("perf_buffer__new", vp, [ct.c_int, ct.c_size_t, vp, vp, vp, vp]),
            ("perf_buffer__poll", ct.c_int, [vp, ct.c_int]),
            ("perf_buffer__consume", ct.c_int, [vp]),
            ("perf_buffer__free", None, [vp]),
        ):
            f = getattr(so, fn)
            f.restype, f.argtypes = res, args
        _LIB = so
    return _LIB


def available() -> str | None:
    """None when libbpf can be loaded, else why not."""
    try:
        lib()
    except LibbpfMissing as e:
        return str(e)
    return None


def possible_cpus() -> int:
    n = lib().libbpf_num_possible_cpus()
    return n if n > 0 else os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# dtypes travel from the loader (which knows the C types through bcc) as JSON
# ---------------------------------------------------------------------------------------------
def dtype_to_json(dt: np.dtype) -> dict[str, Any]:
    if dt.names is None:
        return {"itemsize": dt.itemsize, "base": dt.str}
    fields = []
    for name in dt.names:
        sub, off = dt.fields[name][:2]
        if sub.subdtype is not None:
            base, shape = sub.subdtype
            fields.append([name, base.str, list(shape), off])
        else:
            fields.append([name, sub.str, [], off])
    return {"itemsize": dt.itemsize, "fields": fields}


def dtype_from_json(d: dict[str, Any]) -> np.dtype:
    if "base" in d:
        return np.dtype(d["base"])
    names, formats, offsets = [], [], []
    for name, base, shape, off in d["fields"]:
        names.append(name)
        formats.append((np.dtype(base), tuple(shape)) if shape else np.dtype(base))
        offsets.append(off)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": d["itemsize"]})


# ---------------------------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------------------------
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
PERCPU_TYPES = (BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH)


@dataclass
class MapInfo:
    map_type: int
    map_id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


def map_info(fd: int) -> MapInfo:
    # struct bpf_map_info (include/uapi/linux/bpf.h): type, id, key_size, value_size, max_entries,
    # map_flags, name[16], ...
    buf = (ct.c_uint8 * 128)()
    n = ct.c_uint32(ct.sizeof(buf))
    rc = lib().bpf_obj_get_info_by_fd(fd, buf, ct.byref(n))
    if rc != 0:
        raise OSError(-rc, f"BPF_OBJ_GET_INFO_BY_FD (map fd {fd}): {os.strerror(-rc)}")
    u32 = np.frombuffer(bytes(buf), dtype=np.uint32)
    name = bytes(buf[24:40]).split(b"\0", 1)[0].decode()
    return MapInfo(int(u32[0]), int(u32[1]), int(u32[2]), int(u32[3]), int(u32[4]), name)


class Map:
    """One BPF map by fd, with numpy dtypes for its key and value (value per CPU for per-CPU maps)."""

    def __init__(self, name: str, fd: int, key: np.dtype, value: np.dtype) -> None:
        self.name, self.fd = name, fd
        self.info = map_info(fd)
        self.key_dtype, self.value_dtype = key, value
        if key.itemsize != self.info.key_size or value.itemsize != self.info.value_size:
            raise ValueError(f"map {name}: layout {key.itemsize}/{value.itemsize} bytes, kernel says "
                             f"{self.info.key_size}/{self.info.value_size}")
        self.percpu = self.info.map_type in PERCPU_TYPES
        # Per-CPU values are copied out as one slot per possible CPU, each rounded up to 8 bytes
        # (kernel/bpf/syscall.c bpf_map_value_size).
        self.ncpus = possible_cpus() if self.percpu else 1
        self.slot = (value.itemsize + 7) // 8 * 8 if self.percpu else value.itemsize
        self.max_entries = self.info.max_entries

    def _key(self, key: Any) -> bytes:
        return np.asarray(key, dtype=self.key_dtype).tobytes()

    def update(self, key: Any, value: Any, flags: int = 0) -> None:
        k = self._key(key)
        v = np.asarray(value, dtype=self.value_dtype).tobytes()
        if self.percpu:
            v = (v.ljust(self.slot, b"\0")) * self.ncpus
        rc = lib().bpf_map_update_elem(self.fd, k, v, flags)
        if rc != 0:
            raise OSError(-rc, f"update of map {self.name}: {os.strerror(-rc)}")

    def lookup(self, key: Any) -> np.ndarray | None:
        """The value (an array of one per CPU for per-CPU maps), or None when the key is absent."""
        buf = ct.create_string_buffer(self.slot * self.ncpus)
        rc = lib().bpf_map_lookup_elem(self.fd, self._key(key), buf)
        if rc == -errno.ENOENT:
            return None
        if rc != 0:
            raise OSError(-rc, f"lookup in map {self.name}: {os.strerror(-rc)}")
        if not self.percpu:
            return np.frombuffer(buf.raw, dtype=self.value_dtype, count=1)[0]
        raw = np.frombuffer(buf.raw, dtype=np.uint8).reshape(self.ncpus, self.slot)
        return np.frombuffer(raw[:, : self.value_dtype.itemsize].tobytes(), dtype=self.value_dtype)

    def delete(self, key: Any) -> bool:
        rc = lib().bpf_map_delete_elem(self.fd, self._key(key))
        return rc == 0

    def all_keys(self) -> np.ndarray:
        """Every key, walked with BPF_MAP_GET_NEXT_KEY (the fallback when batch ops are refused)."""
        out = []
        cur = None
        nxt = ct.create_string_buffer(self.key_dtype.itemsize)
        while len(out) < self.max_entries:
            rc = lib().bpf_map_get_next_key(self.fd, cur, nxt)
            if rc != 0:
                break
            cur = nxt.raw
            out.append(cur)
        return np.frombuffer(b"".join(out), dtype=self.key_dtype)


# ---------------------------------------------------------------------------------------------
# Programs
# ---------------------------------------------------------------------------------------------
@dataclass
class ProgStats:
    prog_id: int
    name: str
    run_time_ns: int
    run_cnt: int


def prog_stats(fd: int) -> ProgStats:
    # struct bpf_prog_info: id at 4, name[16] at 64, run_time_ns at 192, run_cnt at 200 (5.1+).
    buf = (ct.c_uint8 * 256)()
    n = ct.c_uint32(ct.sizeof(buf))
    rc = lib().bpf_obj_get_info_by_fd(fd, buf, ct.byref(n))
    if rc != 0:
        raise OSError(-rc, f"BPF_OBJ_GET_INFO_BY_FD (prog fd {fd}): {os.strerror(-rc)}")
    raw = bytes(buf)
    u64 = np.frombuffer(raw, dtype=np.uint64)
    return ProgStats(int(np.frombuffer(raw, dtype=np.uint32)[1]), raw[64:80].split(b"\0", 1)[0].decode(),
                     int(u64[192 // 8]), int(u64[200 // 8]))


def enable_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): run time is counted while the returned fd is open
    (the same counters as sysctl kernel.bpf_stats_enabled, without changing the sysctl)."""
    fd = lib().bpf_enable_stats(0)
    if fd < 0:
        raise OSError(-fd, f"BPF_ENABLE_STATS: {os.strerror(-fd)}")
    return fd


def loaded_prog_ids() -> set[int]:
    """Ids of every BPF program loaded on the host (BPF_PROG_GET_NEXT_ID)."""
    ids: set[int] = set()
    cur = ct.c_uint32(0)
    nxt = ct.c_uint32(0)
    while lib().bpf_prog_get_next_id(cur.value, ct.byref(nxt)) == 0:
        ids.add(nxt.value)
        cur.value = nxt.value
    return ids


# ---------------------------------------------------------------------------------------------
# Perf buffers
# ---------------------------------------------------------------------------------------------
SAMPLE_FN = ct.CFUNCTYPE(None, ct.c_void_p, ct.c_int, ct.c_void_p, ct.c_uint32)
LOST_FN = ct.CFUNCTYPE(None, ct.c_void_p, ct.c_int, ct.c_uint64)


class PerfBuffer:
    """libbpf perf buffer on a BPF_MAP_TYPE_PERF_EVENT_ARRAY fd; ``consume()`` reads every CPU's ring
    without waiting (the recorder drains on its own interval: no wakeup is waited for)."""

    def __init__(self, map_fd: int, pages: int, on_sample: Callable[[int, int, int], None],
                 on_lost: Callable[[int], None]) -> None:
        # Keep the callbacks referenced: libbpf holds only the C pointers.
        self._sample = SAMPLE_FN(lambda _ctx, cpu, data, size: on_sample(cpu, data, size))
        self._lost = LOST_FN(lambda _ctx, _cpu, cnt: on_lost(cnt))
        pb = lib().perf_buffer__new(map_fd, pages, ct.cast(self._sample, ct.c_void_p),
                                    ct.cast(self._lost, ct.c_void_p), None, None)
        if not pb:
            e = ct.get_errno()
            raise OSError(e, f"perf_buffer__new: {os.strerror(e)}")
        self._pb: int | None = pb

    def consume(self) -> None:
        if self._pb:
            lib().perf_buffer__consume(self._pb)

    def close(self) -> None:
        if self._pb:
            lib().perf_buffer__free(self._pb)
            self._pb = None
