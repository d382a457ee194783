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
            ("bpf_prog_get_fd_by_id", ct.c_int, [ct.c_uint32]),
            ("libbpf_num_possible_cpus", ct.c_int, []),
            ("perf_buffer__new_raw", vp, [ct.c_int, ct.c_size_t, vp, vp, vp, vp]),
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
        base, shape = sub.subdtype if sub.subdtype is not None else (sub, ())
        # A struct (an array of them, or one nested) travels as its own description.
        fields.append([name, dtype_to_json(base) if base.names else base.str, list(shape), off])
    return {"itemsize": dt.itemsize, "fields": fields}


def dtype_from_json(d: dict[str, Any]) -> np.dtype:
    if "base" in d:
        return np.dtype(d["base"])
    names, formats, offsets = [], [], []
    for name, base, shape, off in d["fields"]:
        names.append(name)
        bt = dtype_from_json(base) if isinstance(base, dict) else np.dtype(base)
        formats.append((bt, tuple(shape)) if shape else bt)
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
    map_flags: int = 0
    btf_id: int = 0
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0


def map_info(fd: int) -> MapInfo:
    # struct bpf_map_info (include/uapi/linux/bpf.h): type, id, key_size, value_size, max_entries,
    # map_flags, name[16], ifindex, btf_vmlinux_value_type_id, netns_dev, netns_ino, btf_id (at 64),
    # btf_key_type_id, btf_value_type_id
    buf = (ct.c_uint8 * 128)()
    n = ct.c_uint32(ct.sizeof(buf))
    rc = lib().bpf_obj_get_info_by_fd(fd, buf, ct.byref(n))
    if rc != 0:
        raise OSError(-rc, f"BPF_OBJ_GET_INFO_BY_FD (map fd {fd}): {os.strerror(-rc)}")
    u32 = np.frombuffer(bytes(buf), dtype=np.uint32)
    name = bytes(buf[24:40]).split(b"\0", 1)[0].decode()
    return MapInfo(int(u32[0]), int(u32[1]), int(u32[2]), int(u32[3]), int(u32[4]), name, int(u32[5]),
                   int(u32[16]), int(u32[17]), int(u32[18]))


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
    prog_type: int = 0


def prog_stats(fd: int) -> ProgStats:
    # struct bpf_prog_info: type at 0, id at 4, name[16] at 64, run_time_ns at 192, run_cnt at 200 (5.1+).
    buf = (ct.c_uint8 * 256)()
    n = ct.c_uint32(ct.sizeof(buf))
    rc = lib().bpf_obj_get_info_by_fd(fd, buf, ct.byref(n))
    if rc != 0:
        raise OSError(-rc, f"BPF_OBJ_GET_INFO_BY_FD (prog fd {fd}): {os.strerror(-rc)}")
    raw = bytes(buf)
    u64 = np.frombuffer(raw, dtype=np.uint64)
    u32 = np.frombuffer(raw, dtype=np.uint32)
    return ProgStats(int(u32[1]), raw[64:80].split(b"\0", 1)[0].decode(), int(u64[192 // 8]), int(u64[200 // 8]),
                     int(u32[0]))


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


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd for a loaded program (another process's: e.g. a peer tool being measured)."""
    fd = lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        raise OSError(-fd, f"BPF_PROG_GET_FD_BY_ID {prog_id}: {os.strerror(-fd)}")
    return fd


# ---------------------------------------------------------------------------------------------
# Perf buffers
# ---------------------------------------------------------------------------------------------
EVENT_FN = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_int, ct.c_void_p)
LIBBPF_PERF_EVENT_CONT = -2
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_ATTR_WATERMARK = 1 << 14  # bit 14 of the attr flags word (include/uapi/linux/perf_event.h)
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class PerfEventAttr(ct.Structure):
    # The PERF_ATTR_SIZE_VER0 (64-byte) prefix of struct perf_event_attr; the kernel takes it as is.
    _fields_ = [("type", ct.c_uint32), ("size", ct.c_uint32), ("config", ct.c_uint64),
                ("sample_period", ct.c_uint64), ("sample_type", ct.c_uint64), ("read_format", ct.c_uint64),
                ("flags", ct.c_uint64), ("wakeup_watermark", ct.c_uint32), ("bp_type", ct.c_uint32),
                ("config1", ct.c_uint64), ("config2", ct.c_uint64)]


class PerfBuffer:
    """Per-CPU perf rings on a BPF_MAP_TYPE_PERF_EVENT_ARRAY fd (libbpf perf_buffer__new_raw).

    Wakeup policy: the recorder drains every ring on its own interval (``consume()``, no waiting),
    so no event needs to wake it. libbpf's default (wakeup_events = 1) queues an irq_work wakeup for
    every record written; here the events carry a watermark of half the ring instead
    (kernel/events/ring_buffer.c perf_output_wakeup), so a busy ring costs one wakeup per half-ring
    and a quiet one none. Samples are passed on as (cpu, data address, size); lost-record counts
    (PERF_RECORD_LOST, when a ring was full) as a count.
    """

    def __init__(self, map_fd: int, pages: int, on_sample: Callable[[int, int, int], None],
                 on_lost: Callable[[int], None]) -> None:
        def event(_ctx: Any, cpu: int, header: int) -> int:
            typ = ct.c_uint32.from_address(header).value
            if typ == PERF_RECORD_SAMPLE:
                size = ct.c_uint32.from_address(header + 8).value
                on_sample(cpu, header + 12, size)
            elif typ == PERF_RECORD_LOST:
                on_lost(ct.c_uint64.from_address(header + 16).value)
            return LIBBPF_PERF_EVENT_CONT

        self._event = EVENT_FN(event)  # referenced for as long as libbpf may call it
        attr = PerfEventAttr(type=PERF_TYPE_SOFTWARE, size=64, config=PERF_COUNT_SW_BPF_OUTPUT,
                             sample_period=1, sample_type=PERF_SAMPLE_RAW, flags=PERF_ATTR_WATERMARK,
                             wakeup_watermark=max(1, pages * PAGE_SIZE // 2))
        pb = lib().perf_buffer__new_raw(map_fd, pages, ct.byref(attr), ct.cast(self._event, ct.c_void_p),
                                        None, None)
        if not pb:
            e = ct.get_errno()
            raise OSError(e, f"perf_buffer__new_raw: {os.strerror(e)}")
        self._pb: int | None = pb

    def consume(self) -> None:
        if self._pb:
            lib().perf_buffer__consume(self._pb)

    def close(self) -> None:
        if self._pb:
            lib().perf_buffer__free(self._pb)
            self._pb = None
