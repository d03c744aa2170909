"""Issue 13, item 1: `$SERVICE_IP` / `$SERVICE_PORT` in SERVICE_CHECK_SCRIPT are the registered
address and port, as gliderlabs documented; the script runs inside the container, through
`sh -c` when it uses shell syntax.

Test safety: the first script only echoes (the address given with -ip is never contacted); the
second probes the container's own address on a network the test created.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from registrator.checks import check_id
from tests.helpers import (
    HTTPD_COMMAND,
    ConsulAgent,
    ContainerFactory,
    NetworkFactory,
    async_wait_until,
    host_port,
)
from tests.integration.conftest import StartAgent

NOWHERE = "198.18.255.254"  # given with -ip, only ever echoed


async def wait_output(consul: ConsulAgent, check: str, status: str, text: str) -> dict[str, Any]:
    last: object = "never read"

    async def reached() -> dict[str, Any] | None:
        nonlocal last
        found = (await asyncio.to_thread(consul.checks)).get(check)
        last = found and {"Status": found["Status"], "Output": found["Output"]}
        if found and found["Status"] == status and text in found["Output"]:
            return dict(found)
        return None

    try:
        result: dict[str, Any] = await async_wait_until(
            reached, timeout=20, interval=0.2, message=f"check {check}: never {status} {text!r}"
        )
    except AssertionError as err:
        raise AssertionError(f"{err}; last seen: {last!r}") from None
    return result


async def test_placeholders_are_the_registered_address_and_published_port(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    docker_network: NetworkFactory,
) -> None:
    # The example: -p 80 with the script echoing both placeholders.
    running = await start_agent("-ip", NOWHERE)
    box = await asyncio.to_thread(
        containers.run,
        "echo",
        labels={
            "SERVICE_NAME": f"echo-{secrets.token_hex(3)}",
            "SERVICE_CHECK_SCRIPT": "echo ip=$SERVICE_IP port=$SERVICE_PORT",
            "SERVICE_CHECK_INTERVAL": "2s",
        },
        ports={"80/tcp": None},
        network=docker_network.create(),
    )
    service_id = running.service_id(box.name, 80)
    entry = (await running.wait_registered(service_id))[service_id]
    port = host_port(box, "80/tcp")
    assert (entry["Address"], entry["Port"]) == (NOWHERE, port)
    check = await wait_output(
        consul, check_id(service_id, "script"), "passing", f"ip={NOWHERE} port={port}"
    )
    assert "$SERVICE" not in check["Output"]
    assert check["Notes"] == f"registrator runs: echo ip={NOWHERE} port={port}"


async def test_placeholders_with_shell_syntax_probe_the_service_from_inside(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    docker_network: NetworkFactory,
) -> None:
    # One more of the kind: -internal, and a script that needs a shell (a pipe, `||`), which
    # is what gliderlabs' users wrote for Consul's `sh -c`.
    running = await start_agent("-internal")
    network = docker_network.create()
    web = await asyncio.to_thread(
        containers.run,
        "web",
        command=HTTPD_COMMAND,
        labels={
            "SERVICE_NAME": f"probed-{secrets.token_hex(3)}",
            "SERVICE_80_CHECK_SCRIPT": (
                "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc ${SERVICE_IP} $SERVICE_PORT"
                " | head -n 1 || exit 2"
            ),
            "SERVICE_CHECK_INTERVAL": "1s",
        },
        ports={"80/tcp": None},  # -internal registers exposed ports; publishing exposes it
        network=network,
    )
    web.reload()
    address = web.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
    service_id = running.service_id(web.name, 80)
    entry = (await running.wait_registered(service_id))[service_id]
    assert (entry["Address"], entry["Port"]) == (address, 80)
    check = await wait_output(consul, check_id(service_id, "script"), "passing", "200 OK")
    assert f"nc {address} 80" in check["Notes"]
