"""contrib/kubernetes/autoglm-trace-daemonset.yaml parses, has what the probes need, and its recorder
arguments are accepted by `record`'s own option parser."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from autoglm_trace.tracer.commands.record import parse_options

MANIFEST = Path(__file__).resolve().parents[2] / "contrib" / "kubernetes" / "autoglm-trace-daemonset.yaml"


def test_daemonset_manifest() -> None:
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    c = next(c for c in spec["containers"] if c["name"] == "flight")
    assert c["securityContext"]["privileged"] is True
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    for need in ("/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/cgroup", "/sys/kernel/btf", "/host/proc",
                 "/var/cache/autoglm-trace", "/var/lib/autoglm-trace"):
        assert need in mounts, need
    vols = {v["name"] for v in spec["volumes"]}
    assert {m["name"] for m in c["volumeMounts"]} <= vols
    args = [re.sub(r"\$\((\w+)\)", "x", a) for a in c["args"]]
    assert args[0] == "record" and any(a.startswith("--export-parquet=") for a in args)
    parsed, opts = parse_options(args[1:])
    assert parsed.ring and opts.host
