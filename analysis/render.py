"""Terminal rendering of diagnose / oom_postmortem / diff_recordings results.

Evidence first and culprits in the first lines: a tired on-call engineer reads the headline of each
incident and stops. Output is rich markup (escaped where it carries recorded text); rich drops the
styling when stdout is not a terminal.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from autoglm_trace.analysis import containers
from autoglm_trace.printable import escape_markup as escape
from autoglm_trace.printable import printable_lines


def _mib(v: float | None) -> str:
    if v is None:
        return "?"
    if abs(v) >= 2**30:
        return f"{v / 2**30:.2f} GiB"
    return f"{v / 2**20:.0f} MiB"


def _clock(iso: str | None) -> str:
    return iso[11:23] if iso else "?"


def render_diagnosis(d: dict[str, Any], verbose: bool = False) -> str:
    out: list[str] = []
    t = d.get("target") or {}
    w = d["window"]
    head = f"[bold]autoglm-trace analyze[/] {escape(d['recording'])}: "
    head += escape(f"{t.get('comm') or '?'} (pid {t.get('pid')}) {w['start']} .. {_clock(w['end'])}, "
                   f"{w['duration_s']:.0f} s")
    out.append(head)
    r = d.get("requests")
    if r:
        out.append(escape(f"requests: {r['count']} ({r['failed']} failed), p50 {r['p50_ms']:.0f} ms, "
                          f"p99 {r['p99_ms']:.0f} ms, {r['slow']} slow for their size"))
    eng = d.get("engine")
    if eng:
        lat = eng.get("latency") or {}
        line = f"engine: {eng.get('engine')} metrics"
        if lat.get("requests"):
            line += (f", {lat['requests']} requests in {lat['metric']}, p50 {lat.get('p50_ms') or 0:.0f} ms, "
                     f"p99 {lat.get('p99_ms') or 0:.0f} ms")
        line += f" -- {eng['resolution_note']}" if eng.get("used_for_incidents") else (
            f" (scraped every {eng.get('scrape_interval_s')} s; context beside the spans)")
        out.append(escape(line))
    incs = d["incidents"]
    if not incs:
        out.append("[green]No incident:[/] " + ("no request was slow for its size." if r else
                                                "no engine latency spike." if (eng or {}).get("used_for_incidents")
                                                else "no resource signal spiked."))
    if len(incs) > 1 and (d.get("worst") or {}).get("summary"):
        out.append(escape(d["worst"]["summary"]))
    for inc in incs:
        out.append("")
        when = f"Incident {inc['id']} at {_clock(inc['start'])} (+{inc['offset_s']:.1f} s, {inc['duration_s']:.1f} s)"
        out.append(f"[bold red]{escape(when)}[/] {escape(inc['headline'])}")
        for c in inc["causes"]:
            style = "yellow" if c["kind"] == "unexplained" else "cyan"
            share = f", accounts for {100 * c['share']:.0f}% of the extra latency" if c.get("share") is not None else ""
            score = f"score {c['score']:.2f}" if c.get("score") is not None else ""
            out.append(f"  [{style}]{escape(c['kind'])}[/] ({score}{share}): {escape(c['summary'])}")
            for cu in c.get("culprits", [])[:3]:
                cg = f" cgroup {cu['cgroup']}" if cu.get("cgroup") else ""
                # attrib's in-tree location label, else the container / pod / unit and user
                who = cu.get("label") or containers.who(cu) + (" [in target]" if cu.get("in_target") else "")
                if cu.get("where"):
                    cg = ""  # the container / unit says it better than the raw path
                if cu.get("is_recorder"):
                    who += " [autoglm-trace recorder itself]"
                out.append(escape(f"      {who}{cg}: {100 * (cu.get('share') or 0):.0f}%"))
            rest = (c.get("attribution") or {}).get("remainder")
            # Without culprits the rest is all there is to say: whose it was, where known.
            if isinstance(rest, dict) and rest.get("share", 0) >= 0.01 and (c.get("culprits") or rest.get("parts")):
                out.append(escape(f"      ({rest['summary']})"))
        split = inc.get("time_split")
        if isinstance(split, dict) and split.get("parts"):
            out.append(escape("  where the time went: " + time_split_line(split)))
            if verbose:
                for name, ev in c.get("evidence", {}).items():
                    if isinstance(ev, dict) and "ratio" in ev:
                        out.append(escape(f"      {name}: {ev['incident']} vs {ev['baseline']} {ev['unit']} "
                                          f"(x{ev['ratio']}, z {ev['z']})"))
    if d.get("oom"):
        out.append("")
        out.append("[bold red]OOM[/]")
        for k in d["oom"]:
            out.append("  " + escape(oom_line(k)))
    notes = [f for f in d["findings"] if f["kind"] not in ("oom", "no_incident")]
    if notes:
        out.append("")
        out.append("[bold]Findings[/]")
        for f in notes:
            out.append(f"  {escape(f['severity'])}: {escape(f['message'])}")
    if d.get("not_checked"):
        out.append("")
        names = sorted({n["signal"] for n in d["not_checked"]})
        out.append("[dim]" + escape(f"Not checked ({len(names)}): {', '.join(names)}") + "[/]")
        if verbose:
            for n in d["not_checked"]:
                out.append("[dim]" + escape(f"  {n['signal']}: {n['reason']}") + "[/]")
        else:
            reasons = sorted({n["reason"] for n in d["not_checked"]})
            for reason in reasons[:4]:
                out.append("[dim]" + escape(f"  - {reason}") + "[/]")
    return "\n".join(out)


def oom_line(k: dict[str, Any]) -> str:
    what = {"host": "host OOM kill", "memcg": "memcg OOM kill", "cuda": "CUDA out of memory"}.get(k["kind"], k["kind"])
    s = f"{_clock(k['time'])} {what}: pid {k['pid']} {k.get('comm') or '?'}"
    if not k.get("in_target"):
        s += " (outside the target)"
    mem = k["gpu_bytes"] if k["kind"] == "cuda" else k["rss_bytes"]
    s += f", {'GPU' if k['kind'] == 'cuda' else 'RSS'} {_mib(mem)}"
    if k.get("anon_rss_bytes"):
        s += f" (anon {_mib(k['anon_rss_bytes'])})"
    if k.get("limit_bytes"):
        s += f", memcg {k['memcg']} limit {_mib(k['limit_bytes'])}" if k.get("memcg") else \
            f", limit {_mib(k['limit_bytes'])}"
    if k.get("growth_bytes_per_s") is not None:
        s += f", growing {_mib(k['growth_bytes_per_s'])}/s over the last minute"
    s += f" -> {k['verdict']}: {k['verdict_reason']}"
    return s


def render_oom(d: dict[str, Any]) -> str:
    out = []
    if not d["kills"]:
        out.append("[green]No OOM kill and no CUDA out-of-memory in this recording.[/]")
    for k in d["kills"]:
        out.append("[bold red]" + escape(oom_line(k)) + "[/]")
        b = k.get("before") or {}
        out.append(escape(f"  last {b.get('window_s', 10):.0f} s: direct-reclaim stall "
                          f"{b.get('reclaim_stall_ms_target')} ms in the target, {b.get('reclaim_stall_ms_others')} ms "
                          f"in others; {b.get('major_faults_target')} major faults"))
        if k.get("tree_rss_bytes") is not None:
            out.append(escape(f"  target tree RSS {_mib(k['tree_rss_bytes'])}, growing "
                              f"{_mib(k.get('tree_growth_bytes_per_s') or 0)}/s"))
        for g in k.get("others_grew", [])[:5]:
            what = (f"grew {_mib(g['growth_bytes'])}" if g.get("growth_bytes") is not None
                    else f"{g.get('reclaim_stall_ms')} ms reclaim stalls")
            out.append(escape(f"  also: pid {g['pid']} {g.get('comm') or '?'}"
                              f"{' (target)' if g.get('in_target') else ''} {what}"))
        for line in k.get("stderr", []) or []:
            out.append("  [dim]stderr:[/] " + escape(line))
    for n in d.get("not_checked", []):
        out.append("[dim]" + escape(f"not checked: {n['signal']}: {n['reason']}") + "[/]")
    return "\n".join(out)


def render_diff(d: dict[str, Any], top: int = 10) -> str:
    eng = (d.get("latency_source") or "").startswith("engine:")
    nb, nn = ((d["latency"]["base_count"], d["latency"]["new_count"]) if eng else
              (d["base"]["requests"], d["new"]["requests"]))
    out = [escape(f"base {d['base']['recording']} ({nb} requests{' (engine)' if eng else ''}) vs "
                  f"new {d['new']['recording']} ({nn} requests{' (engine)' if eng else ''})")]
    lc = d.get("likely_cause")
    if d.get("regressed"):
        out.append("[bold red]Latency regressed.[/]" + (f" Likely cause: [cyan]{escape(lc['kind'])}[/]: "
                                                        f"{escape(lc['summary'])}" if lc else ""))
    elif d.get("regressed") is False:
        out.append("[green]No significant latency regression.[/]" + (
            f" Largest resource change: {escape(lc['summary'])}" if lc else ""))
    else:
        out.append("No request latency in one of the recordings." + (
            f" Likely cause of a change: {escape(lc['kind'])}: {escape(lc['summary'])}" if lc else ""))
    for key, label in (("latency", "latency"), ("latency_per_token", "per token")):
        dist = d.get(key)
        if not dist:
            continue
        for q in (50, 90, 99):
            p = dist[f"p{q}"]
            mark = " *" if p["significant"] else ""
            out.append(escape(f"  {label} p{q}: {p['base']:.2f} -> {p['new']:.2f} {dist['unit']} "
                              f"(95% CI {p['base_ci'][0]:.2f}-{p['base_ci'][1]:.2f} -> "
                              f"{p['new_ci'][0]:.2f}-{p['new_ci'][1]:.2f}){mark}"))
    if (d.get("latency_source") or "").startswith("engine:"):
        out.append(escape(f"  (latency from the engine's histogram {d['latency_source'][7:]})"))
    out.extend(engine_diff_lines(d.get("engine")))
    for c in d.get("culprits") or []:
        out.append(escape(f"  grew into it: {c['who']}: {c['base']:.4g} -> {c['new']:.4g} {c['unit']}"))
    for side in ("base", "new"):
        split = (d.get("time_split") or {}).get(side)
        if isinstance(split, dict) and split.get("parts"):
            out.append(escape(f"  {side} time: " + time_split_line(split)))
    out.append("[bold]Signals, largest change first:[/]")
    for s in d["signals"][:top]:
        flag = "[red]worse[/]" if s["worse"] else "     "
        out.append(f"  {flag} " + escape(f"{s['describe']}: {s['base']:.4g} -> {s['new']:.4g} {s['unit']}"
                                         f"{' (mean)' if s['normalised'] == 'mean' else ''} (x{s['ratio']:.2f})"
                                         + (f" [{s['cause_kind']}]" if s.get("cause_kind") else "")))
    return "\n".join(out)


def engine_diff_lines(e: dict[str, Any] | None) -> list[str]:
    """The engines' phases (p50 / p99 with a mark when significant) and state, base -> new."""
    if not e:
        return []
    out = [escape(f"  engine ({e['new'].get('engine')}, scraped every {e['base']['scrape_interval_s']:.3g} s / "
                  f"{e['new']['scrape_interval_s']:.3g} s):")]
    for row in e["phases"].values():
        cells = [f"p{q} {row[f'p{q}']['base']:.1f} -> {row[f'p{q}']['new']:.1f} ms"
                 + (" *" if row[f"p{q}"]["significant"] else "") for q in (50, 99)]
        cells.append(f"mean {row['mean']['base']:.1f} -> {row['mean']['new']:.1f} ms")
        out.append(escape(f"    {row['describe'].split(' (')[0]}: " + ", ".join(cells)))
    for role, v in e["state"].items():
        if role == "preemptions_per_s":
            out.append(escape(f"    preemptions: {v['base']:.3g} -> {v['new']:.3g} /s"))
        else:
            fmt = (lambda x: f"{x:.0%}") if role == "kv_cache_usage" else (lambda x: f"{x:.1f}")
            label = {"kv_cache_usage": "KV-cache usage", "running": "running requests",
                     "waiting": "waiting requests"}.get(role, role)
            out.append(escape(f"    {label} (mean): {fmt(v['base']['mean'])} -> "
                              f"{fmt(v['new']['mean'])}"))
    return out


def print_markup(text: str) -> None:
    # Values are escaped where they are placed; this catches any control character that slipped in
    # (our markup has none), keeping the line breaks we composed.
    Console(highlight=False, soft_wrap=True).print(printable_lines(text))


def time_split_line(split: dict[str, Any]) -> str:
    """``on-CPU 12% | run-queue 51% (pid 4242 prep-worker 40%) | sleep 30% (...) | D-state 7%``."""
    out = []
    for p in split.get("parts", []):
        if p["fraction"] < 0.005:
            continue
        by = ", ".join(f"{b['label']} {100 * b['fraction']:.0f}%" for b in p.get("by", [])[:2])
        out.append(f"{p['describe']} {100 * p['fraction']:.0f}%" + (f" ({by})" if by else ""))
    return " | ".join(out)
