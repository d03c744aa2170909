"""/health and /metrics, served by aiohttp next to the agent.

Metrics are read from the reconciler's counters at scrape time by a collector registered in a
registry of our own, so nothing lives in prometheus_client's global default registry.

Two fixed paths need no router, so this uses aiohttp's low-level server (`aiohttp.web.Server`,
"Low Level Server" in aiohttp's docs) straight from its module: importing `aiohttp.web` would
also load the application, router, runner and middleware modules, about 1.4 MB of the agent's
resident memory for nothing (measured; docs/performance.md, "Where the memory goes").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

from aiohttp.web_request import BaseRequest
from aiohttp.web_response import Response
from aiohttp.web_server import Server
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


class HealthServer:
    """The listening socket and aiohttp's per-connection handler; `cleanup()` stops both."""

    def __init__(self, listener: asyncio.Server, handler: Server) -> None:
        self._listener = listener
        self._handler = handler

    async def cleanup(self) -> None:
        self._listener.close()
        await self._handler.shutdown(timeout=1.0)
        await self._listener.wait_closed()


def make_handler(agent: Agent) -> Server:
    """aiohttp's low-level server answering GET /health (JSON) and GET /metrics (Prometheus)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    started = time.monotonic()

    def health() -> Response:
        body = {
            "ready": agent.ready,
            "docker": agent.docker_ok,
            "consul": agent.consul_ok,
            "synced": bool(agent.reconciler and agent.reconciler.synced),
            "uptime_seconds": round(time.monotonic() - started, 1),
        }
        return Response(
            text=json.dumps(body),
            status=200 if agent.ready else 503,
            content_type="application/json",
        )

    async def handle(request: BaseRequest) -> Response:
        if request.path not in ("/health", "/metrics"):
            return Response(status=404, text="404: Not Found")
        if request.method not in ("GET", "HEAD"):
            return Response(status=405, text="405: Method Not Allowed", headers={"Allow": "GET"})
        if request.path == "/health":
            return health()
        return Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    return Server(handle, access_log=None)


async def serve(agent: Agent, address: str) -> HealthServer:
    """Start the server on `HOST:PORT` (`:PORT` = all interfaces); `cleanup()` stops it."""
    host, _, port = address.rpartition(":")
    handler = make_handler(agent)
    listener = await asyncio.get_running_loop().create_server(
        handler, host.strip("[]") or None, int(port)
    )
    return HealthServer(listener, handler)
