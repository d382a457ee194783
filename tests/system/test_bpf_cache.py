"""The compile cache (probes/bpf_cache.py): a warm load runs no clang and works like a compiled one.

Each test uses its own cache directory (``AUTOGLM_TRACE_BPF_CACHE``) and the real loader process: a
first load compiles and writes the entry, a second loads the bytecode with the bpf syscall, and both
count the host's context switches. A damaged entry, or one another user could have written, is not
used: the program is compiled again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from autoglm_trace.probes import bpf_loader, bpf_program
from autoglm_trace.probes.kernel import MAPS

pytestmark = [pytest.mark.root, pytest.mark.bpf]

TEXT = bpf_program.generate_program({"bucket_ms": 20, "families": ["sched", "wakeups", "proc"], "filter": "host",
                                     "defines": {}})


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "bpf-cache"
    monkeypatch.setenv("AUTOGLM_TRACE_BPF_CACHE", str(d))
    return d


def _load_and_count(text: str = TEXT) -> tuple[bool, int, int]:
    b = bpf_loader.load(text, list(MAPS), cflags=["-w"])
    try:
        for _ in range(50):
            time.sleep(0.001)  # our own switches, at least
        time.sleep(0.1)
        return b.cached, len(b.maps["sched_agg"].all_keys()), len(b.links)
    finally:
        b.close()


def _entries(d: Path) -> list[Path]:
    return sorted(d.glob("*.json"))


def test_second_load_comes_from_the_cache_and_counts_switches(cache: Path) -> None:
    cached, n1, links1 = _load_and_count()
    assert not cached and n1 > 0
    [entry] = _entries(cache)
    st = os.stat(entry)
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o600 and os.stat(cache).st_mode & 0o777 == 0o700
    cached, n2, links2 = _load_and_count()
    assert cached and n2 > 0 and links2 == links1
    # Another program text is another entry.
    other = TEXT + "\n// another program\n"
    assert not _load_and_count(other)[0] and len(_entries(cache)) == 2


def test_a_damaged_entry_is_compiled_again(cache: Path) -> None:
    _load_and_count()
    [entry] = _entries(cache)
    e = json.loads(entry.read_text())
    e["progs"][0]["insns"] = "AAAAAAAAAAA="  # one instruction of zeros: the verifier refuses it
    entry.write_text(json.dumps(e))
    cached, n, _ = _load_and_count()
    assert not cached and n > 0
    assert json.loads(entry.read_text())["progs"][0]["insns"] != "AAAAAAAAAAA="  # written anew
    assert _load_and_count()[0]


@pytest.mark.parametrize("loose", ["file", "directory"])
def test_an_entry_others_could_write_is_not_trusted(cache: Path, loose: str) -> None:
    _load_and_count()
    [entry] = _entries(cache)
    os.chmod(entry if loose == "file" else cache, 0o666 if loose == "file" else 0o777)
    assert not _load_and_count()[0]


def test_cache_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOGLM_TRACE_BPF_CACHE", "off")
    assert not _load_and_count()[0] and not _load_and_count()[0]


def test_the_cache_is_bounded(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoglm_trace.probes import bpf_cache

    monkeypatch.setattr(bpf_cache, "MAX_ENTRIES", 2)
    cache.mkdir(mode=0o700)
    for i in range(4):
        bpf_cache.write(f"k{i}", {"maps": []})
        os.utime(cache / f"k{i}.json", (1000 + i, 1000 + i))
    assert [p.name for p in _entries(cache)] == ["k2.json", "k3.json"]
