"""Prometheus metrics at /metrics, read from the engine when scraped.

prometheus_client (about 1 MiB of RSS, and `ssl`'s 4 MiB in a daemon that had no use
for it: ringjobs/sslgate.py) is imported by the first scrape, not at start: a daemon
nobody scrapes does not hold it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, cast

from aiohttp import web

from ringjobs.engine.engine import Engine
from ringjobs.sslgate import allow_ssl

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector


class EngineCollector:
    """Gauges and counters computed from the engine's state at scrape time (a
    prometheus_client Collector by its shape, so that module loads only when scraped)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        engine = self.engine
        up = GaugeMetricFamily("ringjobs_docker_up", "1 if the container engine answers")
        up.add_metric([], 1.0 if engine.engine_ok else 0.0)
        yield up
        active = GaugeMetricFamily("ringjobs_active_runs", "runs being executed now")
        active.add_metric([], float(engine.active_count))
        yield active
        queued = GaugeMetricFamily("ringjobs_queued_runs", "runs waiting for a slot")
        queued.add_metric([], float(engine.queued_count))
        yield queued
        finished = CounterMetricFamily(
            "ringjobs_runs_finished",
            "runs that reached a terminal status",
            labels=["namespace", "status", "reason"],
        )
        for (namespace, status, reason), count in engine.ctx.metrics.runs_finished.items():
            finished.add_metric([namespace, status, reason], float(count))
        yield finished


def metrics_handler(engine: Engine) -> Callable[[web.Request], Awaitable[web.Response]]:
    registry: CollectorRegistry | None = None

    async def handle(request: web.Request) -> web.Response:
        nonlocal registry
        allow_ssl()  # prometheus_client imports ssl
        from prometheus_client import CollectorRegistry, generate_latest

        if registry is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(cast("Collector", EngineCollector(engine)))
        await engine.refresh_engine_status()
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    return handle
