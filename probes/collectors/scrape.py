"""Prometheus /metrics scraping (probes/scrape.py): one collector per --scrape URL."""

from __future__ import annotations

from autoglm_trace.collector import CollectorSpec, Option, Planned, Setup
from autoglm_trace.options import float_in, http_url
from autoglm_trace.probes.scrape import Scraper

OPTIONS = (
    Option(("--scrape",), "scrape", "poll a Prometheus /metrics endpoint (repeatable)", type=http_url,
           action="append", default=(), metavar="URL"),
    Option(("--scrape-interval",), "scrape_interval_s", type=float_in(0.05, 3600, " s"), default=1.0, metavar="S"),
)


def plan(s: Setup) -> list[Planned]:
    interval = float(s.options.get("scrape_interval_s") or 1.0)
    return [(f"scrape{i}" if i else "scrape", lambda u=url: Scraper(u, interval_s=interval))
            for i, url in enumerate(s.options.get("scrape") or ())]


SPEC = CollectorSpec(name="scrape", tables=Scraper.tables, plan=plan, options=OPTIONS,
                     title="serving-engine metrics (Prometheus)", off_reason="not requested (--scrape URL)",
                     order=40)
