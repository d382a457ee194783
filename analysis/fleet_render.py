"""The ``fleet`` result for people: terminal text (rich markup) and one HTML page (Jinja2).

Everything in the result that came from a recording (host names, comms, container names, headlines)
is attacker-controlled text: rich markup is escaped, and the Jinja environment autoescapes.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from rich.markup import escape

from autoglm_trace.analysis.outfile import atomic_file

TEMPLATE = "fleet.html.j2"


def _t(iso: str | None) -> str:
    return iso.replace("T", " ")[:19] if iso else "?"


def _ms(v: float | None) -> str:
    return "?" if v is None else (f"{v / 1000:.2f} s" if v >= 10_000 else f"{v:.0f} ms")


def render_fleet(d: dict[str, Any], limit: int = 15) -> str:
    r = d["range"]
    out = [f"[bold]autoglm-trace fleet[/] {escape(d['dir'])}: "
           + escape(f"{r['hosts'] or 0} hosts, {r['recordings']} recordings, {_t(r['first_ts'])} .. "
                    f"{_t(r['last_ts'])} UTC, {r['requests'] or 0:,} requests, {r['incidents'] or 0} incidents, "
                    f"{r['oom_kills'] or 0} OOM kills")]
    hosts = [h for h in d["by_host"] if h["incidents"]]
    out.append("")
    out.append(f"[bold]Hosts with incidents[/] ({len(hosts)} of {len(d['by_host'])})")
    for h in hosts[:limit]:
        out.append(escape(f"  {h['host']}: {h['incidents']} incident(s), top cause {h['top_cause'] or '?'}"
                          f" ({h['top_cause_incidents'] or 0}), top culprit {h['top_culprit'] or '-'}, "
                          f"worst p99 {_ms(h['worst_p99_ms'])}, last {_t(h['last_incident'])}"))
    if len(hosts) > limit:
        out.append(f"  ... {len(hosts) - limit} more (--json for all)")
    if d["incidents"]:
        out.append("")
        out.append("[bold]Largest incidents[/]")
        for i in d["incidents"][:limit]:
            who = f"pid {i['culprit_pid']} {i['culprit_comm']}" if i.get("culprit_comm") else "no culprit named"
            if i.get("culprit_container"):
                who += f" (container {i['culprit_container']}" + (f", pod {i['culprit_pod']})" if i.get("culprit_pod") else ")")
            out.append(escape(f"  {_t(i['ts'])} {i['host']}: {i['cause'] or 'unexplained'} <- {who}; "
                              f"{i['requests']} slow requests, p99 {_ms(i['latency_ms'])} vs {_ms(i['baseline_ms'])}"))
    if d["top_culprits"]:
        out.append("")
        out.append("[bold]Most frequent culprits[/]")
        for c in d["top_culprits"][:limit]:
            ctr = f" [{c['container']}]" if c.get("container") else ""
            out.append(escape(f"  {c['culprit']}{ctr}: {c['cause']} in {c['incidents']} incident(s) on "
                              f"{c['hosts']} host(s), mean share {100 * (c['mean_share'] or 0):.0f}%"))
    if d["oom"]:
        out.append("")
        out.append(f"[bold]OOM kills[/] ({len(d['oom'])})")
        for o in d["oom"][:limit]:
            out.append(escape(f"  {_t(o['ts'])} {o['host']}: {o['kind']} OOM, pid {o['pid']} {o['comm'] or '?'}"
                              f" ({o['verdict'] or '?'})"))
    g = d["regression"]
    out.append("")
    if g["compare"] == "build":
        what = f"build {g['before']['build']} -> {g['after']['build']}"
    else:
        what = f"{_t(g['before']['start'])} .. {_t(g['before']['end'])} -> {_t(g['after']['start'])} .. {_t(g['after']['end'])}"
    out.append(f"[bold]Latency regression[/] {escape(what)}: {escape(g['verdict'])}")
    for h in [h for h in g["hosts"] if h["regressed"]][:limit]:
        out.append(escape(f"  {h['host']}: p50 {_ms(h['p50']['base'])} -> {_ms(h['p50']['new'])}, "
                          f"p99 {_ms(h['p99']['base'])} -> {_ms(h['p99']['new'])} "
                          f"({h['before_requests']} / {h['after_requests']} requests)"))
    out.append("")
    out.append(f"[dim]{d['engine']}: {d['timing']['seconds']:.2f} s[/]")
    return "\n".join(out)


def _env() -> Environment:
    return Environment(loader=PackageLoader("autoglm_trace.analysis", "templates"),
                       autoescape=select_autoescape(default=True, default_for_string=True),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def fleet_html(d: dict[str, Any]) -> str:
    env = _env()
    env.filters["t"] = _t
    env.filters["ms"] = _ms
    return env.get_template(TEMPLATE).render(d=d)


def write_fleet_html(d: dict[str, Any], path: str) -> int:
    text = fleet_html(d).encode()
    with atomic_file(path) as f:
        f.write(text)
    return len(text)
