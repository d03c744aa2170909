"""Two rules of issue 12 end to end against real dockerd and Consul: a malformed check key
makes the service critical (never unchecked; any other bad value shows as warning), and a
service id someone else holds in Consul is never taken over or deleted. Their tables are in
tests/unit/test_checks.py, test_planner_labels.py and test_plan.py."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import pytest
from docker.models.containers import Container
from docker.models.networks import Network

from registrator.model import META_CONTAINER, META_NODE, META_SOURCE, OWNER_SOURCE
from tests.helpers import (
    ConsulAgent,
    ContainerFactory,
    NetworkFactory,
    async_wait_until,
    warnings_about,
)
from tests.integration.conftest import StartAgent


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def run(containers: ContainerFactory, net: Network, suffix: str, **kwargs: Any) -> Container:
    return await asyncio.to_thread(containers.run, suffix, network=net, **kwargs)


@pytest.fixture
def net(docker_network: NetworkFactory) -> Network:
    """A network of the test's own (198.18.0.0/15), so nothing depends on docker0."""
    return docker_network.create("net")


def checks_of(consul: ConsulAgent, service_id: str) -> dict[str, dict[str, Any]]:
    return {
        check_id: check
        for check_id, check in consul.checks().items()
        if check.get("ServiceID") == service_id
    }


# --- a bad value shows in Consul: critical for a check key, warning for any other ------------


@pytest.mark.parametrize(
    ("labels", "environment", "kinds", "status", "output"),
    [
        pytest.param(
            {"SERVICE_CHECK_HTTP": "/", "SERVICE_CHECK_INTERVAL": "abc"},
            {},
            {"http", "misconfigured", "registrator-node"},
            "critical",
            "label SERVICE_CHECK_INTERVAL: 'abc' is not a duration like 10s, 1m or 500ms; "
            "using 10s",
            id="issue example: interval abc",
        ),
        pytest.param(
            {"SERVICE_CHECK_HTTP": "/", "SERVICE_CHECK_TCP": "off"},
            {"SERVICE_CHECK_TIMEOUT": "soon"},
            {"http", "misconfigured", "registrator-node"},
            "critical",
            "env SERVICE_CHECK_TIMEOUT: 'soon' is not a duration like 10s, 1m or 500ms; left unset",
            id="timeout from env on an HTTP check; TCP off means no TCP check",
        ),
        pytest.param(
            {"SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_TIMEOUT": "0s"},
            {},
            {"tcp", "misconfigured", "registrator-node"},
            "critical",
            "label SERVICE_CHECK_TIMEOUT: '0s' must be more than 0; left unset",
            id="timeout 0s: Consul would use its 10s without a word",
        ),
        # Registered with what is valid, and Consul says what was not: the service serves, so
        # it is warning (still in DNS answers), not critical.
        pytest.param(
            {"SERVICE_WEIGHT": "heavy"},
            {},
            {"misconfigured", "registrator-node"},
            "warning",
            "label SERVICE_WEIGHT: 'heavy' is not a whole number from 1 to 65535; "
            "Consul's default 1 used",
            id="review example: weight heavy",
        ),
        pytest.param(
            {"SERVICE_IP": "192.0.2.9"},
            {"SERVICE_WEIGHT_WARNING": "-1"},
            {"misconfigured", "registrator-node"},
            "warning",
            "label SERVICE_IP: ignored: a container sets its own address only when the operator "
            "allows it with -useIpFromLabel SERVICE_IP; env SERVICE_WEIGHT_WARNING: '-1' is not "
            "a whole number from 1 to 65535; Consul's default 1 used",
            id="SERVICE_IP without the opt-in, and a negative warning weight from env",
        ),
    ],
)
async def test_a_bad_value_shows_in_consul_on_its_service(
    start_agent: StartAgent,
    containers: ContainerFactory,
    net: Network,
    consul: ConsulAgent,
    caplog: pytest.LogCaptureFixture,
    labels: dict[str, str],
    environment: dict[str, str],
    kinds: set[str],
    status: str,
    output: str,
) -> None:
    running = await start_agent("-ip", "127.0.0.1", "-resync", "1")
    name = unique("misconf")
    with caplog.at_level(logging.WARNING):
        box = await run(
            containers,
            net,
            "misconf",
            labels={"SERVICE_NAME": name, **labels},
            environment=environment,
            ports={"80/tcp": None},
        )
        service_id = running.service_id(box.name, 80)
        await running.wait_registered(service_id)
        misconfigured = f"service:{service_id}:misconfigured"
        await async_wait_until(
            lambda: checks_of(consul, service_id).get(misconfigured, {}).get("Output") == output,
            timeout=10,
            message="the misconfigured check never said which key, which value and why",
        )
        await asyncio.sleep(2.5)  # two resyncs: the status kept, each warning still said once
    checks = checks_of(consul, service_id)
    assert set(checks) == {f"service:{service_id}:{kind}" for kind in kinds}
    assert (checks[misconfigured]["Status"], checks[misconfigured]["Notes"]) == (status, output)
    # Registered with what is valid: the address it serves at, Consul's default weights.
    (entry,) = consul.catalog_service(name)
    assert (entry["ServiceAddress"], entry["ServiceWeights"]) == (
        "127.0.0.1",
        {"Passing": 1, "Warning": 1},
    )
    # What a client asking for healthy instances sees: none.
    assert consul.get(f"/v1/health/service/{name}?passing=true") == []
    origins = [f"label {key}" for key in labels] + [f"env {key}" for key in environment]
    named = [origin for origin in origins if f"{origin}:" in output]
    assert named
    for origin in named:
        assert len(warnings_about(caplog, box.name, origin)) == 1


async def test_bare_whole_numbers_are_seconds_and_said_once(
    start_agent: StartAgent,
    containers: ContainerFactory,
    net: Network,
    consul: ConsulAgent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = await start_agent("-ip", "127.0.0.1", "-resync", "1")
    with caplog.at_level(logging.WARNING):
        box = await run(
            containers,
            net,
            "bare",
            labels={
                "SERVICE_NAME": unique("bare"),
                "SERVICE_CHECK_HTTP": "/",
                "SERVICE_CHECK_INTERVAL": "10",
                "SERVICE_CHECK_TIMEOUT": "90",
            },
            ports={"80/tcp": None},
        )
        service_id = running.service_id(box.name, 80)
        await running.wait_registered(service_id)
        await asyncio.sleep(2.5)
    checks = checks_of(consul, service_id)
    assert set(checks) == {f"service:{service_id}:{kind}" for kind in ("http", "registrator-node")}
    # The health endpoint shows a check's definition (the agent's /checks does not).
    (http,) = [
        check
        for check in consul.get(f"/v1/health/checks/{box.labels['SERVICE_NAME']}")
        if check["CheckID"] == f"service:{service_id}:http"
    ]
    assert (http["Interval"], http["Timeout"]) == ("10s", "1m30s")
    for key, value in (("INTERVAL", "10"), ("TIMEOUT", "90")):
        said = warnings_about(caplog, box.name, f"SERVICE_CHECK_{key}", "has no unit")
        assert said == [
            f"container {box.name}: label SERVICE_CHECK_{key}: '{value}' has no unit; "
            f"read as {value}s (write {value}s)"
        ]


# --- never take over or delete a service we do not own -----------------------------------------


def holder_meta(consul: ConsulAgent, service_id: str) -> dict[str, str] | None:
    entry = consul.services().get(service_id)
    return None if entry is None else dict(entry.get("Meta") or {})


async def test_hand_registered_id_is_never_taken_over_and_is_taken_when_gone(
    start_agent: StartAgent,
    containers: ContainerFactory,
    net: Network,
    consul: ConsulAgent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service_id = unique("db-manual")
    by_hand = {
        "ID": service_id,
        "Name": "db",
        "Address": "192.0.2.71",
        "Port": 4711,
        "Meta": {"owner": "ops"},
    }
    consul.put("/v1/agent/service/register", by_hand)
    running = await start_agent("-resync", "1")
    labels = {"SERVICE_ID": service_id, "SERVICE_NAME": "db"}
    with caplog.at_level(logging.WARNING):
        first = await run(containers, net, "db1", labels=labels, ports={"80/tcp": None})
        await async_wait_until(
            lambda: warnings_about(caplog, first.name, service_id),
            timeout=10,
            message="no warning that the id is held by someone else",
        )
        await asyncio.sleep(2.5)  # the event-driven write and two full reconciles
    assert warnings_about(caplog, first.name, service_id) == [
        f"container {first.name}: service id {service_id!r}: Consul already holds it for a "
        f"registration not made by registrator (Meta owner=ops), not for registrator on node "
        f"{running.node!r}; not taken over, registered once that entry is gone"
    ]
    entry = consul.services()[service_id]
    assert (entry["Address"], entry["Port"], entry["Meta"]) == (
        "192.0.2.71",
        4711,
        {"owner": "ops"},
    )

    # Our container goes: the hand-made entry stays.
    await asyncio.to_thread(first.remove, force=True)
    await asyncio.sleep(1.5)
    assert holder_meta(consul, service_id) == {"owner": "ops"}

    # Another container wants it, and ops remove theirs: ours within one resync.
    second = await run(containers, net, "db2", labels=labels, ports={"80/tcp": None})
    await asyncio.sleep(1)
    assert holder_meta(consul, service_id) == {"owner": "ops"}
    consul.put(f"/v1/agent/service/deregister/{service_id}")
    gone = time.monotonic()
    await async_wait_until(
        lambda: (holder_meta(consul, service_id) or {}).get(META_CONTAINER) == second.id,
        timeout=5,
        interval=0.1,
        message="the id was not registered for the container after the foreign entry went",
    )
    assert time.monotonic() - gone < 3  # -resync 1, with a margin for a loaded machine
    await asyncio.to_thread(second.remove, force=True)
    await running.wait_deregistered(service_id)


async def test_another_nodes_entry_is_never_taken_over_by_an_event_driven_write(
    start_agent: StartAgent,
    containers: ContainerFactory,
    net: Network,
    consul: ConsulAgent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service_id = unique("fixed")
    theirs = {
        META_SOURCE: OWNER_SOURCE,
        META_NODE: "node-b",
        META_CONTAINER: "feedfacecafe" + "0" * 52,
    }
    # -resync 0: after the startup reconcile, only events; the entry appears after it.
    running = await start_agent("-resync", "0")
    consul.put(
        "/v1/agent/service/register",
        {"ID": service_id, "Name": "fixed", "Address": "192.0.2.72", "Port": 80, "Meta": theirs},
    )
    with caplog.at_level(logging.WARNING):
        box = await run(
            containers,
            net,
            "fixed",
            labels={"SERVICE_ID": service_id, "SERVICE_NAME": "fixed"},
            ports={"80/tcp": None},
        )
        await async_wait_until(
            lambda: warnings_about(caplog, box.name, service_id),
            timeout=10,
            message="no warning that another node's registrator holds the id",
        )
    assert (
        "Consul already holds it for the registrator of node 'node-b' (container feedfacecafe)"
        in (warnings_about(caplog, box.name, service_id)[0])
    )
    assert holder_meta(consul, service_id) == theirs
    assert running.agent.reconciler is not None
    assert service_id not in running.agent.reconciler.owned_service_ids()
    await asyncio.to_thread(box.remove, force=True)
    await asyncio.sleep(1)
    assert holder_meta(consul, service_id) == theirs


async def test_two_nodes_with_one_fixed_id_do_not_take_it_from_each_other(
    start_agent: StartAgent,
    containers: ContainerFactory,
    net: Network,
    consul: ConsulAgent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service_id = unique("shared-fixed")
    first = await start_agent("-resync", "1")
    box = await run(
        containers,
        net,
        "fixed",
        labels={"SERVICE_ID": service_id, "SERVICE_NAME": "fixed"},
        ports={"80/tcp": None},
    )
    await first.wait_registered(service_id)
    with caplog.at_level(logging.WARNING):
        second = await start_agent("-resync", "1")
        deadline = time.monotonic() + 3.5  # three resyncs of each
        while time.monotonic() < deadline:
            assert (holder_meta(consul, service_id) or {}).get(META_NODE) == first.node
            await asyncio.sleep(0.2)
    assert len(warnings_about(caplog, box.name, service_id, f"node {first.node!r}")) == 1
    assert second.agent.reconciler is not None
    assert service_id not in second.agent.reconciler.owned_service_ids()
