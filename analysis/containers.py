"""Culprits named as operators know them: the container / pod, the systemd unit and the user.

The recorder stores each process's cgroup path and user (``process_identities``, probes/identity.py;
the target's own processes in ``processes``). The path says where the process runs:

* Kubernetes, cgroupfs driver (v1 or v2): ``/kubepods/burstable/pod<uid>/<container-id>``,
  ``/kubepods/pod<uid>/<container-id>`` (guaranteed QoS);
* Kubernetes, systemd driver: ``/kubepods.slice/kubepods-burstable.slice/
  kubepods-burstable-pod<uid with _ for ->.slice/cri-containerd-<id>.scope`` (``crio-<id>.scope``,
  ``docker-<id>.scope`` for other runtimes);
* Docker: ``/docker/<id>`` (cgroupfs), ``/system.slice/docker-<id>.scope`` (systemd);
* Podman: ``/machine.slice/libpod-<id>.scope``, rootless under ``user@UID.service/.../libpod-<id>.scope``;
* containerd without Kubernetes: ``/<namespace>/<id>``, ``cri-containerd-<id>.scope``;
* systemd: the innermost ``*.service`` / ``*.scope`` is the unit (``/system.slice/vllm.service``).

Names: a Kubernetes pod is named by what the recorder could read on the node -- the pod's hostname
(``/proc/PID/root/etc/hostname``, which kubelet sets to the pod name unless the pod uses the host's
network) -- else by its uid's first 8 characters; the container by its name when the runtime's
config on disk has one (Docker's ``config.v2.json``), else by its id's first 12 characters (as
``docker ps`` / ``crictl ps`` show it). No kubelet, CRI or Docker API is queried.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa

_HEX = r"[0-9a-f]{12,64}"
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_POD = re.compile(rf"pod({_UID})")
_QOS = re.compile(r"kubepods[-/](burstable|besteffort)")
# Parents under which a bare hex id is a container (cgroupfs drivers; containerd namespaces).
_ID_PARENTS = ("docker", "moby", "k8s.io", "default", "containerd", "libpod_parent", "lxc", "ecs")
_SCOPE_ID = re.compile(rf"^(?:(cri-containerd|docker|crio|libpod|containerd)-)({_HEX})\.scope$")
_BARE_ID = re.compile(rf"^({_HEX})$")
_UNIT = re.compile(r"^(.+\.(?:service|scope))$")


def parse_cgroup(path: str | None) -> dict[str, Any]:
    """What a cgroup path says about where a process runs (empty dict: nothing known)."""
    if not path or path == "/":
        return {}
    parts = [p for p in path.split("/") if p]
    out: dict[str, Any] = {}
    m = _POD.search(path)
    if m and "kubepods" in path:
        out["runtime"] = "kubernetes"
        out["pod_uid"] = m.group(1).replace("_", "-")
        q = _QOS.search(path)
        out["qos"] = q.group(1) if q else "guaranteed"
    cid = None
    for i in range(len(parts) - 1, -1, -1):
        p = parts[i]
        s = _SCOPE_ID.match(p)
        if s:
            cid = s.group(2)
            rt = {"cri-containerd": "containerd", "libpod": "podman", "crio": "cri-o"}.get(s.group(1), s.group(1))
            out.setdefault("runtime", rt)
            out["container_runtime"] = rt
            break
        b = _BARE_ID.match(p)
        if b and (out.get("runtime") == "kubernetes" or (i > 0 and parts[i - 1] in _ID_PARENTS)):
            cid = b.group(1)
            if "runtime" not in out:
                out["runtime"] = "docker" if "docker" in parts else "containerd"
            break
    if cid:
        out["container_id"] = cid
    elif "runtime" not in out:
        for p in reversed(parts):
            u = _UNIT.match(p)
            if u and not p.startswith(("session-", "init.scope")):
                out["unit"] = u.group(1)
                break
        us = re.search(r"user@(\d+)\.service", path)
        if us:
            out["user_unit_uid"] = int(us.group(1))
        if parts and parts[-1].startswith("session-") and parts[-1].endswith(".scope"):
            out["session"] = parts[-1][: -len(".scope")]
    if "runtime" in out and "unit" not in out:
        for p in parts:  # the systemd unit that owns the containers (docker.service, kubelet's slice)
            if p.endswith(".service"):
                out["unit"] = p
                break
    return out


def label(meta: dict[str, Any]) -> str | None:
    """``pod batch-7f9c/trainer``, ``container web``, ``unit vllm.service`` -- or None."""
    rt = meta.get("runtime")
    cname = meta.get("container_name")
    cid = meta.get("container_id")
    container = cname or (cid[:12] if cid else None)
    if rt == "kubernetes":
        pod = meta.get("pod_name") or (meta.get("pod_uid") or "")[:8] or "?"
        return f"pod {pod}/{container}" if container else f"pod {pod}"
    if container:
        return f"container {container}" + (f" ({rt})" if rt and rt != "docker" else "")
    if meta.get("unit"):
        return f"unit {meta['unit']}"
    return None


def identities(rec: Any) -> dict[int, dict[str, Any]]:
    """pid -> {cgroup, uid, user, pod_name, container_name} from ``process_identities`` (latest row
    per pid wins: a pid reused later is the later process)."""
    if not rec.has("process_identities"):
        return {}
    t: pa.Table = rec.table("process_identities")
    if not t.num_rows:
        return {}
    out: dict[int, dict[str, Any]] = {}
    cols = [c for c in ("pid", "comm", "uid", "user", "cgroup", "pod_name", "container_name") if c in t.column_names]
    for r in t.select(cols).to_pylist():
        out[int(r["pid"])] = {k: v for k, v in r.items() if k != "pid" and v is not None}
    return out


def merge(rec: Any, info: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Add every recorded process's identity to ``culprits.process_info``'s pid map."""
    for pid, ident in identities(rec).items():
        meta = info.setdefault(pid, {"comm": ident.get("comm"), "cgroup": None})
        for k in ("cgroup", "uid", "user", "pod_name", "container_name"):
            if meta.get(k) is None and ident.get(k) is not None:
                meta[k] = ident[k]
        if meta.get("comm") is None:
            meta["comm"] = ident.get("comm")
    return info


def naming(meta: dict[str, Any]) -> dict[str, Any]:
    """The culprit fields: container / pod / unit / user and one ``label`` for people."""
    where = parse_cgroup(meta.get("cgroup"))
    for k in ("pod_name", "container_name"):
        if meta.get(k):
            where[k] = meta[k]
    out: dict[str, Any] = {}
    if where.get("runtime"):
        out["container"] = {k: where.get(k) for k in ("runtime", "container_id", "container_name", "pod_uid",
                                                       "pod_name", "qos") if where.get(k) is not None}
    if where.get("unit"):
        out["unit"] = where["unit"]
    if meta.get("user") is not None:
        out["user"] = meta["user"]
    elif meta.get("uid") is not None:
        out["user"] = str(meta["uid"])
    lab = label(where)
    if lab:
        out["where"] = lab
    return out


def who(c: dict[str, Any]) -> str:
    """``pod batch-7f9c/trainer (pid 9123 `python`, user alice)`` -- or ``pid 9123 `python` ``."""
    base = f"pid {c['pid']}" + (f" `{c['comm']}`" if c.get("comm") else "")
    extra = [f"user {c['user']}"] if c.get("user") not in (None, "root") else []
    if c.get("where"):
        return f"{c['where']} ({base}{', ' + ', '.join(extra) if extra else ''})"
    return base + (f" ({', '.join(extra)})" if extra else "")
