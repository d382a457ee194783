"""Compiled BPF programs kept between runs, so a warm ``record`` does not run clang again.

bcc compiles the program text with its in-process clang/LLVM every time (about 0.8 s here: most of
``record``'s start-up). What bcc hands the kernel is plain bytecode with the maps' fds as ld_imm64
immediates (BPF_PSEUDO_MAP_FD, include/uapi/linux/bpf.h), plus map definitions the kernel reports back
(BPF_OBJ_GET_INFO_BY_FD). That is cached after a compile: the maps' definitions, each program's
instructions with every map fd replaced by the map's index, its program type, and where bcc attached
it. A warm run creates the maps and loads the programs with the bpf syscall itself (BPF_MAP_CREATE,
BPF_PROG_LOAD: the verifier checks the bytecode again, as for any load), and attaches them with libbcc's
attach calls. Only the loader process (probes/bpf_loader.py) uses this module.

The key is everything the bytecode depends on: the program text, cflags, the perf events attached
(bcc loads their programs only then), bcc's version, the kernel headers in use, the kernel's release
and build, the boot (tracepoint formats are read from tracefs at compile time) and the possible CPUs
(perf output arrays are sized by them). An entry that fails to
load is dropped and the program compiled again. The cache is root's: a 0700 directory owned by root,
0600 files, checked on the open fd before anything in them is trusted (another user must not be able
to hand root's loader bytecode). ``AUTOGLM_TRACE_BPF_CACHE`` names another directory, or ``off``.
"""

from __future__ import annotations

import base64
import ctypes as ct
import hashlib
import json
import os
import stat
import struct
from functools import cache
from pathlib import Path
from typing import Any

DEFAULT_DIR = "/var/cache/autoglm-trace/bpf"
FORMAT = 1
MAX_ENTRY = 16 << 20
MAX_ENTRIES = 64  # one per distinct program (options, kernel, boot): the oldest go first

# include/uapi/linux/bpf.h
BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_OBJ_GET_INFO_BY_FD, BPF_RAW_TRACEPOINT_OPEN = 0, 5, 15, 17
BPF_BTF_LOAD, BPF_BTF_GET_FD_BY_ID = 18, 19
BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP = 26, 23
BPF_MAP_TYPE_TASK_STORAGE = 29  # needs the program's BTF for its key and value (bpf_local_storage.c)
BPF_LD_IMM64 = 0x18
BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE = 1, 2
SYS_BPF = 321  # x86_64 (arch/x86/entry/syscalls/syscall_64.tbl); arm64 is 280
if os.uname().machine in ("aarch64", "arm64"):
    SYS_BPF = 280


def cache_dir() -> Path | None:
    v = os.environ.get("AUTOGLM_TRACE_BPF_CACHE", DEFAULT_DIR)
    if v in ("", "off", "0") or os.geteuid() != 0:
        return None
    return Path(v)


def _kernel_id() -> str:
    u = os.uname()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        cpus = Path("/sys/devices/system/cpu/possible").read_text().strip()
    except OSError:
        cpus = str(os.cpu_count())
    return f"{u.release}|{u.version}|{u.machine}|{boot}|{cpus}"


def key(req: dict[str, Any], bcc_version: str) -> str:
    # The perf events too: bcc loads a perf-event program only when it is attached, so an entry made
    # without them lacks it (a load of the same text without `on_major_fault` once cost every later
    # warm run its major-fault counts).
    parts = [str(FORMAT), req["text"], json.dumps(req.get("cflags") or []), json.dumps(req.get("maps") or []),
             json.dumps(req.get("perf_events") or [], sort_keys=True),
             bcc_version, os.environ.get("BCC_KERNEL_SOURCE", ""), _kernel_id()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Files: root's only
# ---------------------------------------------------------------------------------------------
def _safe_dir(d: Path, create: bool) -> bool:
    try:
        if create:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(d)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o077


def read(k: str) -> dict[str, Any] | None:
    d = cache_dir()
    if d is None or not _safe_dir(d, create=False):
        return None
    try:
        fd = os.open(d / f"{k}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077 or st.st_size > MAX_ENTRY:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            entry = json.loads(f.read(MAX_ENTRY + 1))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not (isinstance(entry, dict) and entry.get("format") == FORMAT and entry.get("key") == k):
        return None
    try:
        os.utime(d / f"{k}.json")  # recently used: kept by the pruning
    except OSError:
        pass
    return entry


def write(k: str, entry: dict[str, Any]) -> None:
    d = cache_dir()
    if d is None or not _safe_dir(d, create=True):
        return
    tmp = d / f".{k}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({**entry, "format": FORMAT, "key": k}, f)
        os.replace(tmp, d / f"{k}.json")
    except OSError:
        tmp.unlink(missing_ok=True)
        return
    _prune(d)


def _prune(d: Path) -> None:
    try:
        entries = sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    for p in entries[:-MAX_ENTRIES]:
        p.unlink(missing_ok=True)


def drop(k: str) -> None:
    d = cache_dir()
    if d is not None:
        (d / f"{k}.json").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# What bcc loaded -> an entry
# ---------------------------------------------------------------------------------------------
def _map_refs(insns: bytes) -> list[tuple[int, int]]:
    """(instruction index, fd) of every ld_imm64 that loads a map by fd."""
    refs = []
    for i in range(len(insns) // 8):
        code, regs, _off, imm = struct.unpack_from("<BBhi", insns, i * 8)
        if code == BPF_LD_IMM64 and (regs >> 4) in (BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE):
            refs.append((i, imm))
    return refs


def entry_from(b: Any, reply: dict[str, Any], map_fds: dict[str, int], typed: list[str]) -> dict[str, Any] | None:
    """The cache entry of what ``b`` (a bcc.BPF) loaded and attached, plus the tp_btf programs of
    ``typed`` (load_typed()), or None when it holds something this module cannot reproduce (then
    nothing is cached)."""
    from autoglm_trace.probes import libbpf  # noqa: PLC0415

    maps: list[dict[str, Any]] = []
    index: dict[int, int] = {}

    def add_map(fd: int) -> int:
        if fd not in index:
            info = libbpf.map_info(fd)
            maps.append({"type": info.map_type, "key_size": info.key_size, "value_size": info.value_size,
                         "max_entries": info.max_entries, "flags": info.map_flags, "name": info.name,
                         "btf_ids": [info.btf_id, info.btf_key_type_id, info.btf_value_type_id]})
            index[fd] = len(maps) - 1
        return index[fd]

    progs = []

    def add_prog(name: str, prog_type: int, **extra: Any) -> None:
        insns = bytes(b.dump_func(name.encode()))
        refs = [(i, add_map(fd)) for i, fd in _map_refs(insns)]
        progs.append({"name": name, "type": prog_type, "insns": base64.b64encode(insns).decode(), "refs": refs,
                      **extra})

    for fname, fn in b.funcs.items():
        add_prog(fname.decode(), libbpf.prog_stats(fn.fd).prog_type)
    links = []
    for ev in typed:
        # The kernel's BTF ids hold for its boot, which is part of the key: a warm load skips the
        # lookup (libbpf parses the whole vmlinux BTF for each, ~10 ms).
        add_prog(f"tp_btf__{ev}", BPF_PROG_TYPE_TRACING, attach_btf=ev, attach_btf_id=_vmlinux_btf_id(ev))
        links.append(["tp_btf", ev, f"tp_btf__{ev}"])
    btfs: dict[int, int] = {}  # BTF object id -> index in `btf`
    btf_blobs: list[str] = []
    for m in maps:
        if m["type"] == BPF_MAP_TYPE_TASK_STORAGE:
            btf_id, key_tid, value_tid = m.pop("btf_ids")
            if btf_id not in btfs:
                btfs[btf_id] = len(btf_blobs)
                btf_blobs.append(base64.b64encode(btf_bytes(btf_id)).decode())
            m["btf"] = [btfs[btf_id], key_tid, value_tid]
        else:
            m.pop("btf_ids")
    names = {p["name"] for p in progs}
    for tp in b.raw_tracepoint_fds:
        fn = "raw_tracepoint__" + tp.decode()
        if fn not in names:
            return None
        links.append(["raw_tracepoint", tp.decode(), fn])
    for tp in b.tracepoint_fds:
        fn = "tracepoint__" + tp.decode().replace(":", "__")
        if fn not in names:
            return None
        links.append(["tracepoint", tp.decode(), fn])
    wanted = {m["name"]: add_map(map_fds[m["name"]]) for m in reply["maps"]}
    return {"maps": maps, "progs": progs, "links": links, "reply_maps": reply["maps"], "wanted": wanted,
            "btf": btf_blobs}


# ---------------------------------------------------------------------------------------------
# An entry -> maps, programs, attachments (no compile)
# ---------------------------------------------------------------------------------------------
_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


def _bpf(cmd: int, attr: ct.Array) -> int:
    r = _libc.syscall(SYS_BPF, cmd, attr, ct.sizeof(attr))
    if r < 0:
        e = ct.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


def _map_create(m: dict[str, Any], btf_fds: list[int]) -> int:
    attr = (ct.c_uint8 * 128)()
    struct.pack_into("<IIIIIII", attr, 0, m["type"], m["key_size"], m["value_size"], m["max_entries"],
                     m["flags"], 0, 0)
    name = m["name"].encode()[:15]
    ct.memmove(ct.addressof(attr) + 28, name, len(name))
    if m.get("btf"):  # map_ifindex at 44, then btf_fd, btf_key_type_id, btf_value_type_id
        i, key_tid, value_tid = m["btf"]
        struct.pack_into("<III", attr, 48, btf_fds[i], key_tid, value_tid)
    return _bpf(BPF_MAP_CREATE, attr)


def btf_bytes(btf_id: int) -> bytes:
    """The raw BTF of a loaded BTF object (a program's own, as bcc loaded it)."""
    attr = (ct.c_uint8 * 128)()
    struct.pack_into("<I", attr, 0, btf_id)
    fd = _bpf(BPF_BTF_GET_FD_BY_ID, attr)
    try:
        # struct bpf_btf_info: btf (u64), btf_size (u32), id, name (u64), name_len, kernel_btf
        info = (ct.c_uint8 * 32)()
        for _ in range(2):
            size = struct.unpack_from("<I", info, 8)[0]
            buf = (ct.c_uint8 * max(size, 1))()
            struct.pack_into("<QI", info, 0, ct.addressof(buf) if size else 0, size)
            q = (ct.c_uint8 * 128)()
            struct.pack_into("<IIQ", q, 0, fd, ct.sizeof(info), ct.addressof(info))
            _bpf(BPF_OBJ_GET_INFO_BY_FD, q)
            if size and struct.unpack_from("<I", info, 8)[0] == size:
                return bytes(buf)
        raise OSError(0, f"BTF object {btf_id}: its size changed while read")
    finally:
        os.close(fd)


def _btf_load(blob: bytes) -> int:
    data = ct.create_string_buffer(blob, len(blob))
    attr = (ct.c_uint8 * 128)()
    struct.pack_into("<QQIII", attr, 0, ct.addressof(data), 0, len(blob), 0, 0)
    return _bpf(BPF_BTF_LOAD, attr)


@cache
def _vmlinux_btf_id(event: str) -> int:
    """The BTF id of the kernel's btf_trace_<event> typedef, which a tp_btf program names (asked
    once per event: a compile loads and then caches each)."""
    from autoglm_trace.probes import libbpf  # noqa: PLC0415

    f = libbpf.lib().libbpf_find_vmlinux_btf_id
    f.argtypes = [ct.c_char_p, ct.c_int]
    r = f(event.encode(), BPF_TRACE_RAW_TP)
    if r <= 0:
        raise OSError(-r if r < 0 else 2, f"no BTF-typed tracepoint {event} in this kernel")
    return int(r)


def load_typed(name: str, insns: bytes, event: str) -> tuple[int, int]:
    """Load ``insns`` (bcc's bytecode of a tp_btf program, map fds in place) and attach it to
    ``event``; (program fd, attachment fd). bcc 0.26 loads no tp_btf program itself."""
    fd = _load_insns(name, BPF_PROG_TYPE_TRACING, bytearray(insns), _vmlinux_btf_id(event))
    try:
        return fd, _attach_typed(fd)
    except OSError:
        os.close(fd)
        raise


def _attach_typed(prog_fd: int) -> int:
    attr = (ct.c_uint8 * 128)()
    struct.pack_into("<QI", attr, 0, 0, prog_fd)  # name NULL: the tracepoint is the program's attach_btf_id
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, attr)


def _prog_load(p: dict[str, Any], map_fds: list[int]) -> int:
    """Load an entry's program, its map references pointed at ``map_fds``."""
    insns = bytearray(base64.b64decode(p["insns"]))
    for i, m in p["refs"]:
        struct.pack_into("<i", insns, i * 8 + 4, map_fds[m])
    btf_id = (p.get("attach_btf_id") or _vmlinux_btf_id(p["attach_btf"])) if p.get("attach_btf") else 0
    return _load_insns(p["name"], p["type"], insns, btf_id)


def _load_insns(name: str, prog_type: int, insns: bytearray, attach_btf_id: int = 0) -> int:
    """BPF_PROG_LOAD; ``attach_btf_id``: a tp_btf program's btf_trace_<event> type."""
    buf = (ct.c_uint8 * len(insns)).from_buffer(insns)
    lic = ct.create_string_buffer(b"GPL")
    log = ct.create_string_buffer(1 << 16)
    attr = (ct.c_uint8 * 128)()
    # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf,
    # kern_version, prog_flags, prog_name[16]
    struct.pack_into("<IIQQIIQII", attr, 0, prog_type, len(insns) // 8, ct.addressof(buf), ct.addressof(lic),
                     0, 0, 0, 0, 0)
    short = name.encode()[:15]
    ct.memmove(ct.addressof(attr) + 48, short, len(short))
    if attach_btf_id:  # expected_attach_type at 68, attach_btf_id at 108
        struct.pack_into("<I", attr, 68, BPF_TRACE_RAW_TP)
        struct.pack_into("<I", attr, 108, attach_btf_id)
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError:
        # Once more with the verifier's log, for the message.
        struct.pack_into("<IIQ", attr, 24, 1, len(log), ct.addressof(log))
        try:
            return _bpf(BPF_PROG_LOAD, attr)
        except OSError as e:
            last = log.value.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise OSError(e.errno, f"{name}: {e.strerror} {last[0]}".strip()) from None


def load(entry: dict[str, Any], perf_events: list[dict[str, Any]]) -> tuple[dict[str, Any], list[int]]:
    """Create, load and attach what ``entry`` describes; the loader's reply and fds. Raises OSError
    (every fd made so far closed) when anything fails."""
    from bcc.libbcc import lib  # noqa: PLC0415 - libbcc's attach calls (no compile)
    from bcc.utils import get_online_cpus  # noqa: PLC0415

    made: list[int] = []
    try:
        btf_fds = []
        for blob in entry.get("btf") or []:
            btf_fds.append(_btf_load(base64.b64decode(blob)))
            made.append(btf_fds[-1])
        map_fds = []
        for m in entry["maps"]:
            map_fds.append(_map_create(m, btf_fds))
            made.append(map_fds[-1])
        progs: dict[str, int] = {}
        for p in entry["progs"]:
            progs[p["name"]] = _prog_load(p, map_fds)
            made.append(progs[p["name"]])
        links, link_fds = [], []
        for kind, tp, fn in entry["links"]:
            if kind == "tp_btf":
                fd = _attach_typed(progs[fn])
            elif kind == "raw_tracepoint":
                fd = lib.bpf_attach_raw_tracepoint(progs[fn], tp.encode())
            else:
                cat, _, ev = tp.partition(":")
                fd = lib.bpf_attach_tracepoint(progs[fn], cat.encode(), ev.encode())
            if fd < 0:
                raise OSError(-fd if fd < -1 else ct.get_errno(), f"attaching {fn} to {tp} failed")
            made.append(fd)
            links.append([kind, tp])
            link_fds.append(fd)
        notes = []
        for pe in perf_events:
            if pe["fn"] not in progs:
                notes.append(f"perf event {pe['fn']}: no such program")
                continue
            per_cpu = []
            for cpu in get_online_cpus():
                fd = lib.bpf_attach_perf_event(progs[pe["fn"]], ct.c_uint(pe["type"]), ct.c_uint(pe["config"]),
                                               ct.c_ulonglong(pe.get("sample_period", 1)), ct.c_ulonglong(0),
                                               -1, cpu, -1)
                if fd < 0:
                    break
                per_cpu.append((cpu, fd))
            if len(per_cpu) < len(get_online_cpus()):
                for _cpu, fd in per_cpu:
                    os.close(fd)
                notes.append(f"perf event {pe['fn']}: Failed to attach BPF to perf event")
                continue
            for cpu, fd in per_cpu:
                made.append(fd)
                links.append(["perf_event", f"{pe['type']}:{pe['config']}:cpu{cpu}"])
                link_fds.append(fd)
    except Exception:
        for fd in made:
            os.close(fd)
        raise
    for fd in btf_fds:  # the maps hold their BTF now
        made.remove(fd)
        os.close(fd)
    maps_reply = [m for m in entry["reply_maps"] if m["name"] in entry["wanted"]]
    fds = [map_fds[entry["wanted"][m["name"]]] for m in maps_reply] + list(progs.values()) + link_fds
    reply = {"ok": True, "maps": maps_reply, "progs": list(progs), "links": links, "notes": notes,
             "nfds": len(fds), "cached": True}
    return reply, fds
