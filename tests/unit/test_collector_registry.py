"""The collector registry: every collector declared once, and the session, the parsers and the
manifest driven by those declarations alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from autoglm_trace import schema
from autoglm_trace.collector import Collector, CollectorSpec, Option, SessionContext, Setup
from autoglm_trace.errors import UsageError
from autoglm_trace.probes import collectors as registry_pkg
from autoglm_trace.probes.collectors import _check, option_defaults, owner_of, registry
from autoglm_trace.tracer.commands import record, top
from autoglm_trace.tracer.session import Recorder, RecordOptions


def test_every_declared_table_is_in_the_schema_and_every_table_has_an_owner():
    specs = registry()
    assert [s.name for s in specs][:4] == ["proc", "identity", "kernel", "gpu"]  # start order
    declared = {t for s in specs for t in s.tables}
    assert declared <= set(schema.TABLES)
    # Every table a recording can hold is written by some declared collector ...
    assert set(schema.TABLES) - declared == set(), set(schema.TABLES) - declared
    # ... and the owner is looked up, not guessed from a name.
    assert owner_of("sched") == ["kernel"] and set(owner_of("spans")) >= {"spans", "latency_log", "probe"}


def test_declarations_are_checked_for_clashes():
    a = CollectorSpec(name="a", tables=(), plan=lambda s: [], options=(Option(("--x",), "x"),))
    b = CollectorSpec(name="b", tables=(), plan=lambda s: [], options=(Option(("--y",), "x"),))
    with pytest.raises(RuntimeError, match="declared by a and b"):
        _check([a, b])
    with pytest.raises(RuntimeError, match="two collectors"):
        _check([a, dataclasses.replace(a, options=())])
    c = CollectorSpec(name="c", tables=(), plan=lambda s: [], options=(Option(("--x",), "z"),))
    with pytest.raises(RuntimeError, match="flag --x"):
        _check([a, c])


def test_record_parser_takes_every_declared_option(tmp_path: Path):
    flags = {f for s in registry() for o in s.options for f in o.flags}
    help_text = record.build_parser().format_help()
    shown = {f for s in registry() for o in s.options if not o.hidden for f in o.flags}
    assert all(f in help_text for f in shown)
    for p in (record.build_parser(), top.build_parser()):
        known = {f for a in p._actions for f in a.option_strings}  # reading, not editing
        assert flags <= known
    _args, opts = record.parse_options(["--host", "--no-gpu", "--bucket", "20", "--scrape",
                                        "http://127.0.0.1:1/metrics", "--scrape", "http://127.0.0.1:2/metrics"])
    assert opts.collector_options["gpu"] is False and opts.collector_options["bucket_ms"] == 20
    assert opts.scrape == ["http://127.0.0.1:1/metrics", "http://127.0.0.1:2/metrics"]
    assert set(opts.collector_options) == set(option_defaults())


def test_top_hides_record_only_options_without_editing_argparse():
    text = top.build_parser().format_help()
    for hidden in ("--output", "--ring", "--keep-bytes", "--json", "--quiet"):
        assert hidden not in text
    assert "--window" in text and "--no-bpf" in text and "flight recorder" not in text
    with pytest.raises(UsageError, match="does not record"):
        top.parse_options(["--host", "-o", "x"])


def test_options_built_in_code_take_the_declared_defaults(tmp_path: Path):
    opts = RecordOptions(output=tmp_path / "r", host=True)
    assert opts.option("bpf") is True and opts.scrape == [] and opts.scrape_interval_s == 1.0
    with pytest.raises(AttributeError):
        _ = opts.no_such_option
    view = opts.manifest_view()
    assert view["bpf"] is True and view["scrape"] == [] and "probe_body" not in view


def _recorder(tmp_path: Path, root: bool, **copts) -> Recorder:
    r = Recorder(RecordOptions(output=tmp_path / "r", host=True, collector_options=copts), write_files=False)
    r.is_root = root
    r.run_as = None
    return r


def test_plans_follow_the_options(tmp_path: Path):
    names = [n for n, _ in _recorder(tmp_path, False)._build_collectors()]
    assert names == ["proc", "identity", "kernel", "gpu", "spans"]  # scrape / probe / latency log: not asked for
    planned = dict(_recorder(tmp_path, False)._build_collectors())
    assert "need root" in planned["kernel"]
    planned = dict(_recorder(tmp_path, True, bpf=False, gpu=False, spans=False,
                             probe=["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"])._build_collectors())
    assert planned["kernel"] == "disabled with --no-bpf" and planned["gpu"] == "disabled with --no-gpu"
    assert "spans" not in planned and callable(planned["probe"]) and callable(planned["probe1"])


class _Fake(Collector):
    name = "fake"
    tables = ("alerts",)

    def start(self, ctx: SessionContext) -> None:
        self.ctx = ctx


def test_manifest_lists_every_collector_with_tables_and_status(tmp_path: Path, monkeypatch):
    """Also the ones that did not run; a new declaration needs nothing but itself."""
    fake = CollectorSpec(name="fake", tables=("alerts",), plan=lambda s: [("fake", _Fake)], order=5)
    monkeypatch.setattr(registry_pkg, "registry", lambda: (*registry(), fake))
    import autoglm_trace.tracer.session as session

    monkeypatch.setattr(session, "registry", registry_pkg.registry)
    r = _recorder(tmp_path, False, gpu=False)
    r.manifest = {"collectors": {}}
    r._build_collectors = lambda: [(n, f) for n, f in Recorder._build_collectors(r)
                                   if n in ("gpu", "kernel", "fake")]  # start nothing real
    r._start_collectors(None)  # type: ignore[arg-type]
    m = r.manifest["collectors"]
    assert set(m) == {s.name for s in registry()} | {"fake"}
    for name, entry in m.items():
        assert entry["tables"], name
    assert m["fake"]["status"] == "ok" and m["fake"]["tables"] == ["alerts"]
    assert m["kernel"]["status"] == "unavailable" and "sched" in m["kernel"]["tables"]
    assert m["gpu"] == {"status": "unavailable", "reason": "disabled with --no-gpu",
                        "tables": list(registry()[3].tables)}
    assert m["scrape"]["status"] == "off" and m["scrape"]["tables"] == ["scrape_samples", "probe_stats"]
    assert m["proc"]["status"] == "off"  # filtered out above: planned, but not started here


def test_setup_carries_the_session_facts(tmp_path: Path):
    r = _recorder(tmp_path, True, bucket_ms=None)
    s = r.setup()
    assert isinstance(s, Setup) and s.host_mode and not s.flight and s.is_root
    assert s.options["interval_ms"] == 100 and "bpf" in s.options
