"""The generated bcc program text and the BTF offset reader (no root, no BPF)."""

from __future__ import annotations

import ctypes as ct
import json
import re
import struct

import numpy as np
import pytest

from autoglm_trace.probes import bpf_maps, bpf_program, btf, kernel_events

OFFSETS = {macro: 100 + 8 * i for i, (macro, _path) in enumerate(btf.TASK_FIELDS)}


def program(**opts):
    return bpf_program.generate_program({"task_offsets": OFFSETS, "defines": {}, "group_dead": False,
                                         "typed": True, **opts})


def test_every_family_and_its_tracepoints_are_in_the_default_program():
    text = program()
    for fam in bpf_program.FAMILIES.values():
        assert f"#define HAVE_{fam.name.upper()} 1" in text
        assert (bpf_program.BPF_DIR / fam.source).read_text() in text
        for cat, ev in fam.required:
            if fam.raw:
                assert f"RAW_TRACEPOINT_PROBE({ev})" in text or f"TP_BTF({ev})" in text
            else:
                assert f"TRACEPOINT_PROBE({cat}, {ev})" in text
    assert text.index("BPF_HASH(target_tgids") < text.index("TP_BTF(sched_switch)")
    # proc.c refers to maps of sched.c / memory.c, so it comes after them.
    assert text.index("RAW_TRACEPOINT_PROBE(sched_process_fork)") > text.index("BPF_TASK_STORAGE(thread_states")


def test_typed_path_is_chosen_by_option_and_names_its_programs():
    typed, raw = program(typed=True), program(typed=False)
    assert "#define HAVE_TASK_STORAGE 1" in typed and "HAVE_TASK_STORAGE 1" not in raw
    # The loader loads these itself (bcc compiles them but loads no tp_btf program).
    assert bpf_program.tp_btf_events(typed) == ["sched_switch", "sched_migrate_task", "sched_waking"]
    assert bpf_program.tp_btf_events(raw) == []
    # Each program is written once: the macro makes it a raw tracepoint without the typed path.
    assert "RAW_TRACEPOINT_PROBE(sched_switch)" not in raw and "TP_BTF(sched_switch)" in raw


def test_prologue_defines_bucket_filter_and_btf_offsets():
    text = program(bucket_ms=250, filter="cgroup")
    assert "#define BUCKET_NS 250000000ULL" in text
    assert "#define FILTER_MODE 2" in text
    for macro, value in OFFSETS.items():
        assert f"#define {macro} {value}\n" in text
    assert "#define FILTER_MODE 0" in program(filter="host")
    assert "#define FILTER_MODE 1" in program()


def test_filter_code_follows_forks_in_the_kernel():
    text = program()
    fork = text[text.index("RAW_TRACEPOINT_PROBE(sched_process_fork)") :]
    fork = fork[: fork.index("\n}\n")]
    assert "current_in_target(ptgid)" in fork
    assert "target_tgids.update(&ctgid" in fork
    assert "bpf_get_current_cgroup_id()" in text  # cgroup-mode match


def test_family_selection_and_optional_tracepoints():
    text = program(families=["oom", "sched"])
    assert "HAVE_SCHED" in text and "HAVE_OOM" in text and "HAVE_IO" not in text
    assert "block_rq_issue" not in text
    # Concatenation order is fixed, whatever the order asked for.
    assert text.index("sched.c --") < text.index("oom.c --")
    with_memcg = program(families=["memory"], defines={"HAVE_TP_MEMCG_RECLAIM": 1})
    assert "#define HAVE_TP_MEMCG_RECLAIM 1" in with_memcg
    assert "#define HAVE_EXIT_GROUP_DEAD 1" in program(group_dead=True)
    with pytest.raises(ValueError, match="unknown probe families"):
        program(families=["sched", "nope"])
    with pytest.raises(ValueError):
        program(filter="galaxy")


def test_wakeups_family_needs_sched_and_marks_interrupt_contexts():
    text = program(families=["wakeups", "sched"], defines={"HAVE_TP_SOFTIRQ": 1, "HAVE_TP_HRTIMER_EXPIRE": 1})
    assert text.index("sched.c --") < text.index("wakeups.c --")  # it reads sched.c's thread_states
    assert "TP_BTF(sched_waking)" in text
    assert "#define HAVE_TP_SOFTIRQ 1" in text and "#define HAVE_TP_IRQ_HANDLER" not in text
    # Without the sched family its C code would not compile: it is left out.
    alone = program(families=["wakeups", "oom"])
    assert "HAVE_WAKEUPS" not in alone and "sched_waking" not in alone


def test_no_kernel_struct_is_read_through_headers():
    # Every task_struct access goes through a BTF offset macro (headers may not match the kernel).
    text = re.sub(r"/\*.*?\*/", "", program(), flags=re.S)
    # The typed path names the type only for the verifier (a pointer, never dereferenced by layout).
    assert text.count("struct task_struct") == 1 and "typedef struct task_struct *ktask;" in text
    assert "#include" not in text


def _c_struct_size(text: str, name: str) -> int:
    """Size of a C struct of u64/u32/s32/char[16] members, with natural alignment."""
    body = re.search(r"struct " + name + r" \{(.*?)\};", text, re.S).group(1)
    size, align = 0, 1
    for m in re.finditer(r"^\s*(u64|u32|s32|char)\s+(\w+)(\[(\w+)\])?;", body, re.M):
        typ, count = m.group(1), m.group(4)
        width = {"u64": 8, "u32": 4, "s32": 4, "char": 1}[typ]
        n = 16 if count else 1
        size = (size + width - 1) // width * width + width * n
        align = max(align, width)
    return (size + align - 1) // align * align


@pytest.mark.parametrize(
    "cstruct,pystruct",
    [("proc_event", kernel_events.ProcEvent), ("oom_event", kernel_events.OomEvent), ("reclaim_event", kernel_events.ReclaimEvent)],
)
def test_perf_event_layouts_match_the_c_structs(cstruct, pystruct):
    text = program()
    assert _c_struct_size(text, cstruct) == ct.sizeof(pystruct)


def test_exit_code_decoding():
    assert kernel_events.decode_exit_code(3 << 8) == (3, None)
    assert kernel_events.decode_exit_code(0) == (0, None)
    assert kernel_events.decode_exit_code(9) == (None, 9)
    assert kernel_events.decode_exit_code(0x80 | 11) == (None, 11)  # core dumped


def test_ctypes_dtype_keeps_the_exact_layout():
    class Leaf(ct.Structure):
        _fields_ = [("a", ct.c_uint64), ("b", ct.c_uint32), ("hist", ct.c_uint32 * 4),
                    ("comm", ct.c_char * 16)]

    dt = bpf_maps.ctypes_dtype(Leaf)
    assert dt.itemsize == ct.sizeof(Leaf)
    v = Leaf(7, 3, (ct.c_uint32 * 4)(1, 2, 3, 4), b"python3")
    import numpy as np

    arr = np.frombuffer(bytes(v), dt)
    assert arr["a"][0] == 7 and arr["b"][0] == 3 and list(arr["hist"][0]) == [1, 2, 3, 4]
    assert arr["comm"][0] == b"python3"


# --- BTF -------------------------------------------------------------------------------------
def _blob() -> bytes:
    """A tiny BTF: int, struct inner {int x; int y;}, and struct task_struct {int pad;
    union {int a; struct inner in;}; int tgid;} with the union anonymous at byte 8."""
    strings = b"\0int\0inner\0x\0y\0task_struct\0pad\0a\0in\0tgid\0"
    off = {s: strings.index(s.encode() + b"\0") for s in ["int", "inner", "x", "y", "task_struct",
                                                         "pad", "a", "in", "tgid"]}
    t = b""
    # 1: int (4 bytes)
    t += struct.pack("<III", off["int"], 1 << 24, 4) + struct.pack("<I", 32)
    # 2: struct inner {x@0, y@32 bits}
    t += struct.pack("<III", off["inner"], (4 << 24) | 2, 8)
    t += struct.pack("<III", off["x"], 1, 0) + struct.pack("<III", off["y"], 1, 32)
    # 3: anonymous union {a, in}
    t += struct.pack("<III", 0, (5 << 24) | 2, 8)
    t += struct.pack("<III", off["a"], 1, 0) + struct.pack("<III", off["in"], 2, 0)
    # 4: struct task_struct {pad@0, <anon union>@64 bits, tgid@128 bits}
    t += struct.pack("<III", off["task_struct"], (4 << 24) | 3, 20)
    t += struct.pack("<III", off["pad"], 1, 0) + struct.pack("<III", 0, 3, 64)
    t += struct.pack("<III", off["tgid"], 1, 128)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(t), len(t), len(strings))
    return hdr + t + strings


def test_btf_offsets_through_anonymous_unions_and_nested_structs():
    b = btf.BTF(_blob())
    assert b.offsetof("task_struct", "pad") == 0
    assert b.offsetof("task_struct", "a") == 8
    assert b.offsetof("task_struct", "in.y") == 12
    assert b.offsetof("task_struct", "tgid") == 16
    assert b.sizeof("task_struct") == 20
    with pytest.raises(btf.BTFError):
        b.offsetof("task_struct", "nope")
    with pytest.raises(btf.BTFError):
        btf.BTF(b"\0" * 32)


def test_btf_of_this_kernel_when_readable():
    if not btf.VMLINUX.exists():
        pytest.skip("this kernel has no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)")
    offs = btf.task_offsets()
    # pid and tgid are adjacent pid_t members of task_struct in every kernel since 2.6.
    assert offs["OFF_TASK_TGID"] == offs["OFF_TASK_PID"] + 4
    assert offs["OFF_TASK_NIVCSW"] == offs["OFF_TASK_NVCSW"] + 8
    assert len(set(offs.values())) == len(offs)
    if "OFF_TASK_SI_PCOUNT" in offs:  # CONFIG_SCHED_INFO: read as one pair by sched.c
        assert offs["OFF_TASK_SI_RUN_DELAY"] == offs["OFF_TASK_SI_PCOUNT"] + 8


def test_sched_runs_no_wakeup_program_and_says_when_it_has_no_run_queue_wait(monkeypatch):
    from autoglm_trace.probes import kernel_features

    text = program(families=["sched", "proc"])
    assert "RAW_TRACEPOINT_PROBE(sched_wakeup" not in text  # the wait comes from sched_info
    assert "#ifndef OFF_TASK_SI_PCOUNT" in text  # without it: no wait, said below
    monkeypatch.setattr(btf, "task_offsets", lambda: dict(OFFSETS))
    assert "CONFIG_SCHED_INFO" in kernel_features.family_degraded("sched")
    monkeypatch.setattr(btf, "task_offsets", lambda: {**OFFSETS, "OFF_TASK_SI_PCOUNT": 8, "OFF_TASK_SI_RUN_DELAY": 16})
    assert kernel_features.family_degraded("sched") is None
    assert kernel_features.family_degraded("faults") is None


def test_map_layouts_survive_the_trip_from_the_loader():
    from autoglm_trace.probes import libbpf

    class Key(ct.Structure):
        _fields_ = [("bucket", ct.c_uint64), ("tid", ct.c_uint32), ("tgid", ct.c_uint32)]

    class Leaf(ct.Structure):
        _fields_ = [("n", ct.c_uint64), ("hist", ct.c_uint32 * 32), ("comm", ct.c_char * 16), ("x", ct.c_uint8)]

    for dt in (bpf_maps.ctypes_dtype(Key), bpf_maps.ctypes_dtype(Leaf), np.dtype(np.uint32)):
        back = libbpf.dtype_from_json(json.loads(json.dumps(libbpf.dtype_to_json(dt))))
        assert back == dt and back.itemsize == dt.itemsize


def test_typed_path_needs_what_the_btf_lacks(monkeypatch):
    b = btf.BTF(_blob())  # a task_struct only: no tp_btf typedefs, no bpf enums
    assert "btf_trace_sched_switch" in btf.typed_problem(b)
    monkeypatch.setenv(btf.TYPED_OFF_ENV, "1")
    assert btf.TYPED_OFF_ENV in btf.typed_problem(b)


def test_cache_key_covers_the_perf_events():
    # bcc loads a perf-event program only when attached: an entry made without it must not serve a
    # load that attaches it.
    from autoglm_trace.probes import bpf_cache

    req = {"text": "x", "maps": [], "cflags": []}
    pe = [{"fn": "on_major_fault", "type": 1, "config": 6, "sample_period": 1}]
    assert bpf_cache.key(req, "0.26") != bpf_cache.key({**req, "perf_events": pe}, "0.26")
    assert bpf_cache.key({**req, "perf_events": []}, "0.26") == bpf_cache.key(req, "0.26")
