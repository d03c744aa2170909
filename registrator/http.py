"""/health and /metrics, served by aiohttp next to the agent.

Metrics are read from the reconciler's counters at scrape time by a collector registered in a
registry of our own, so nothing lives in prometheus_client's global default registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from registrator.agent import Agent

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        ready = GaugeMetricFamily("registrator_ready", "1 once the first full reconcile is done")
        ready.add_metric([], 1.0 if agent.ready else 0.0)
        yield ready
        up = GaugeMetricFamily(
            "registrator_backend_up", "1 if the backend answered last time", labels=["backend"]
        )
        up.add_metric(["docker"], 1.0 if agent.docker_ok else 0.0)
        up.add_metric(["consul"], 1.0 if agent.consul_ok else 0.0)
        yield up
        reconciler = agent.reconciler
        if reconciler is None:
            return
        stats = reconciler.stats
        yield CounterMetricFamily("registrator_events", "Docker events seen", value=stats.events)
        reconciles = CounterMetricFamily(
            "registrator_reconciles", "reconciles run", labels=["scope"]
        )
        reconciles.add_metric(["container"], stats.container_reconciles)
        reconciles.add_metric(["full"], stats.full_reconciles)
        yield reconciles
        yield CounterMetricFamily(
            "registrator_registrations", "services registered or updated", value=stats.registrations
        )
        yield CounterMetricFamily(
            "registrator_deregistrations", "services deregistered", value=stats.deregistrations
        )
        errors = CounterMetricFamily("registrator_errors", "errors by kind", labels=["kind"])
        for kind in ("docker", "consul", "consul_rejected", "swarm"):
            errors.add_metric([kind], stats.errors.get(kind, 0))
        yield errors
        yield CounterMetricFamily(
            "registrator_consul_writes", "write requests sent to Consul", value=agent.consul.writes
        )
        duration = GaugeMetricFamily(
            "registrator_full_reconcile_seconds", "wall time of the last full reconcile"
        )
        duration.add_metric([], stats.last_full_seconds)
        yield duration
        lag = GaugeMetricFamily(
            "registrator_event_lag_seconds",
            "delay between a Docker event's own time and its arrival here (last event)",
        )
        lag.add_metric([], stats.last_event_lag)
        yield lag
        yield CounterMetricFamily(
            "registrator_lost_node_deregistrations",
            "services of lost Swarm nodes this agent deregistered as the Swarm leader",
            value=agent.reaper.reaped if agent.reaper is not None else 0,
        )
        owned = GaugeMetricFamily("registrator_owned_services", "services this node owns in Consul")
        owned.add_metric([], len(reconciler.owned_service_ids()))
        yield owned


def make_app(agent: Agent) -> web.Application:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    started = time.monotonic()

    async def health(_: web.Request) -> web.Response:
        body = {
            "ready": agent.ready,
            "docker": agent.docker_ok,
            "consul": agent.consul_ok,
            "synced": bool(agent.reconciler and agent.reconciler.synced),
            "uptime_seconds": round(time.monotonic() - started, 1),
        }
        return web.json_response(body, status=200 if agent.ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(agent: Agent, address: str) -> web.AppRunner:
    """Start the server on `HOST:PORT` (`:PORT` = all interfaces); returns its runner."""
    host, _, port = address.rpartition(":")
    runner = web.AppRunner(make_app(agent), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]") or None, int(port))
    await site.start()
    return runner
