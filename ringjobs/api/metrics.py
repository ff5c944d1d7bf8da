"""Prometheus metrics at /metrics, read from the engine when scraped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ringjobs.engine.engine import Engine


class EngineCollector(Collector):
    """Gauges and counters computed from the engine's state at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
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
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))

    async def handle(request: web.Request) -> web.Response:
        await engine.refresh_engine_status()
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    return handle
