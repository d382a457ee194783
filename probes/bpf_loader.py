"""bcc in a short-lived process: compile, load and attach there, hand the descriptors to the recorder.

bcc compiles with an in-process clang/LLVM (about 150 MB mapped and touched) and keeps it for the life of
the process. The recorder therefore never imports bcc: :func:`load` starts
``python -m autoglm_trace.probes.bpf_loader FD`` with one end of a SOCK_SEQPACKET socketpair, sends the
program text, and receives a JSON description plus the file descriptors (SCM_RIGHTS,
``socket.send_fds``) of

- the maps it asked for, with the numpy layout of their keys and values (bcc parsed the C types);
- every loaded program (kept for ``bpf_prog_info`` run-time statistics);
- every attachment: raw-tracepoint fds (BPF_RAW_TRACEPOINT_OPEN) and the perf-event fds of
  tracepoint and perf-event attachments (perf_event_open + PERF_EVENT_IOC_SET_BPF).

bcc 0.26 compiles tp_btf programs (``TP_BTF`` in probes/bpf/common.h: functions ``tp_btf__<event>``)
but has no way to load them: this process takes their bytecode from bcc (maps already resolved) and
loads them itself as BPF_PROG_TYPE_TRACING / BPF_TRACE_RAW_TP against the kernel's
``btf_trace_<event>`` type (probes/bpf_cache.py load_typed).

An attachment lives as long as some process holds its fd (kernel/bpf/syscall.c bpf_raw_tp_link_release,
kernel/events/core.c perf_event_release_kernel), so once the recorder holds them the helper exits --
with ``os._exit``, skipping bcc's atexit cleanup, which would PERF_EVENT_IOC_DISABLE the shared perf
events before closing its copies. Closing the recorder's fds (:meth:`Loaded.close`, or the recorder's
exit) detaches everything and frees the maps.

A warm run does not compile: the loader first looks in the compile cache (probes/bpf_cache.py) for the
bytecode of the same program on the same kernel and loads that with the bpf syscall.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

MAX_MSG = 1 << 20
FDS_PER_MSG = 200  # SCM_MAX_FD is 253 (include/net/scm.h)
LOAD_TIMEOUT_S = 120.0


class LoadError(RuntimeError):
    """The program did not compile, load or attach; the message is one line."""


@dataclass
class Loaded:
    """What the recorder holds: maps by name, program fds by name, attachment fds."""

    maps: dict[str, Any]  # name -> libbpf.Map
    progs: dict[str, int]
    links: list[tuple[str, str, int]]  # (kind, name, fd)
    notes: list[str] = field(default_factory=list)
    helper_pid: int = 0
    helper_s: float = 0.0
    cached: bool = False  # loaded from the compile cache (probes/bpf_cache.py), no clang run

    def close(self) -> None:
        fds = [m.fd for m in self.maps.values()] + list(self.progs.values()) + [fd for *_, fd in self.links]
        self.maps, self.progs, self.links = {}, {}, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# Recorder side
# ---------------------------------------------------------------------------------------------
def load(text: str, maps: list[str], perf_events: list[dict[str, Any]] | None = None,
         cflags: list[str] | None = None, timeout_s: float = LOAD_TIMEOUT_S) -> Loaded:
    """Compile and attach ``text`` in a helper process; return the descriptors it handed over.

    ``perf_events``: [{"fn": name, "type": PERF_TYPE_*, "config": ..., "sample_period": n}], attached
    on every CPU; one that fails is reported in ``Loaded.notes``, not raised.
    """
    from autoglm_trace.probes import libbpf  # noqa: PLC0415 - numpy only when loading

    problem = libbpf.available()
    if problem:
        raise LoadError(problem)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "autoglm_trace.probes.bpf_loader", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=err, stderr=err,
            )
        finally:
            theirs.close()
        fds: list[int] = []
        try:
            ours.settimeout(timeout_s)
            ours.sendall(json.dumps({"text": text, "maps": maps, "perf_events": perf_events or [],
                                     "cflags": cflags or []}).encode())
            reply = json.loads(ours.recv(MAX_MSG) or b"null")
            if not isinstance(reply, dict):
                raise LoadError(_died(proc, err))
            if not reply.get("ok"):
                raise LoadError(str(reply.get("error") or "the loader failed"))
            while len(fds) < reply["nfds"]:
                _msg, got, _flags, _addr = socket.recv_fds(ours, 16, FDS_PER_MSG)
                if not got:
                    raise LoadError("the loader closed the socket before handing over every descriptor")
                fds.extend(got)
        except (OSError, ValueError) as e:
            for fd in fds:
                os.close(fd)
            proc.kill()
            proc.wait()
            raise LoadError(f"the loader did not answer ({e}); {_died(proc, err)}") from None
        except LoadError:
            for fd in fds:
                os.close(fd)
            proc.kill()
            proc.wait()
            raise
        finally:
            ours.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    it = iter(fds)
    out = Loaded({}, {}, [], list(reply.get("notes", [])), proc.pid, time.monotonic() - t0, bool(reply.get("cached")))
    try:
        for m in reply["maps"]:
            fd = next(it)
            out.maps[m["name"]] = None  # placeholder so close() sees a partial set
            out.maps[m["name"]] = libbpf.Map(m["name"], fd, libbpf.dtype_from_json(m["key"]),
                                             libbpf.dtype_from_json(m["value"]))
        for name in reply["progs"]:
            out.progs[name] = next(it)
        for kind, name in reply["links"]:
            out.links.append((kind, name, next(it)))
    except Exception:
        out.maps = {k: v for k, v in out.maps.items() if v is not None}
        out.close()
        for fd in it:
            os.close(fd)
        raise
    return out


def _died(proc: subprocess.Popen, err: Any) -> str:
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    err.seek(0)
    tail = [ln for ln in err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    return f"loader exited with status {proc.returncode}" + (f": {tail[-1].strip()}" if tail else "")


# ---------------------------------------------------------------------------------------------
# Helper side (imports bcc)
# ---------------------------------------------------------------------------------------------
def _serve(req: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    import bcc  # noqa: PLC0415 - only this process maps LLVM

    from autoglm_trace.probes import bpf_cache, headers  # noqa: PLC0415
    from autoglm_trace.probes.bpf_maps import ctypes_dtype  # noqa: PLC0415
    from autoglm_trace.probes.bpf_program import tp_btf_events  # noqa: PLC0415
    from autoglm_trace.probes.libbpf import dtype_to_json  # noqa: PLC0415


    headers.apply()
    k = bpf_cache.key(req, str(getattr(bcc, "__version__", "")))
    entry = bpf_cache.read(k)
    if entry is not None:
        try:
            return bpf_cache.load(entry, req.get("perf_events") or [])
        except Exception:  # noqa: BLE001 - anything wrong with an entry: compile instead
            bpf_cache.drop(k)  # stale or damaged: compile, and cache anew
    try:
        b = bcc.BPF(text=req["text"].encode(), cflags=list(req.get("cflags") or []))
    except Exception as e:  # bcc raises bare Exception on compile / load / attach failures
        lines = str(e).strip().splitlines()
        return {"ok": False, "error": lines[-1] if lines else type(e).__name__}, []
    notes = []
    for pe in req.get("perf_events") or []:
        try:
            b.attach_perf_event(ev_type=pe["type"], ev_config=pe["config"], fn_name=pe["fn"].encode(),
                                sample_period=pe.get("sample_period", 1))
        except Exception as e:  # noqa: BLE001 - reported, the rest still runs
            notes.append(f"perf event {pe['fn']}: {str(e).strip().splitlines()[-1]}")
    maps, fds, map_fds = [], [], {}
    for name in req.get("maps") or []:
        try:
            t = b.get_table(name.encode())
        except KeyError:
            continue
        maps.append({"name": name, "key": dtype_to_json(_dtype(t.Key, ctypes_dtype)),
                     "value": dtype_to_json(_dtype(getattr(t, "sLeaf", t.Leaf), ctypes_dtype))})
        fds.append(t.map_fd)  # per-CPU maps: sLeaf is one CPU's value, Leaf the array of them
        map_fds[name] = t.map_fd
    progs = []
    for fname, fn in b.funcs.items():
        progs.append(fname.decode())
        fds.append(fn.fd)
    typed = tp_btf_events(req["text"])
    typed_links = []
    for ev in typed:
        name = f"tp_btf__{ev}"
        try:
            fd, link = bpf_cache.load_typed(name, bytes(b.dump_func(name.encode())), ev)
        except OSError as e:
            return {"ok": False, "error": f"loading {name}: {e.strerror or e}"}, []
        progs.append(name)
        fds.append(fd)
        typed_links.append((ev, link))
    links = []
    for ev, link in typed_links:
        links.append(["tp_btf", ev])
        fds.append(link)
    for tp, fd in b.raw_tracepoint_fds.items():
        links.append(["raw_tracepoint", tp.decode()])
        fds.append(fd)
    for tp, fd in b.tracepoint_fds.items():
        links.append(["tracepoint", tp.decode()])
        fds.append(fd)
    for (ev_type, ev_config), per_cpu in b.open_perf_events.items():
        for cpu, fd in per_cpu.items():
            links.append(["perf_event", f"{ev_type}:{ev_config}:cpu{cpu}"])
            fds.append(fd)
    reply = {"ok": True, "maps": maps, "progs": progs, "links": links, "notes": notes, "nfds": len(fds)}
    if not notes:  # a perf event refused now may work next time: cache only a complete load
        try:
            entry = bpf_cache.entry_from(b, reply, map_fds, typed)
        except (OSError, KeyError, ValueError):
            entry = None
        if entry is not None:
            bpf_cache.write(k, entry)
    return reply, fds


def _dtype(cls: Any, ctypes_dtype: Any) -> Any:
    import ctypes as ct  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    if issubclass(cls, ct.Structure):
        return ctypes_dtype(cls)
    return np.dtype(cls)


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    try:
        req = json.loads(sock.recv(MAX_MSG))
        try:
            reply, fds = _serve(req)
        except Exception as e:  # noqa: BLE001 - one line back to the recorder
            reply, fds = {"ok": False, "error": f"{type(e).__name__}: {e}"}, []
        sock.sendall(json.dumps(reply).encode())
        for i in range(0, len(fds), FDS_PER_MSG):
            socket.send_fds(sock, [b"F"], fds[i : i + FDS_PER_MSG])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # No atexit: bcc's cleanup would disable and detach what the recorder now holds.
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
