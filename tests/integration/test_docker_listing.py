"""DockerClient.list_containers against the real daemon: the two fields a full reconcile reads,
nothing else kept (the rest is dropped while decoding, to keep the agent's peak memory low)."""

from __future__ import annotations

import pytest

from registrator.docker import DockerClient
from tests.helpers import ContainerFactory, docker_host

pytestmark = pytest.mark.docker


async def test_list_keeps_only_id_and_state_of_running_and_stopped_containers(
    containers: ContainerFactory,
) -> None:
    running = containers.run("running", labels={"a.label": "x"}, ports={"80/tcp": None})
    stopped = containers.run("stopped", command=["true"])
    stopped.wait(timeout=30)
    async with DockerClient(docker_host()) as docker:  # the lane's engine
        await docker.negotiate()
        listed = {item["Id"]: item for item in await docker.list_containers()}
    assert listed[running.id] == {"Id": running.id, "State": "running"}
    assert listed[stopped.id] == {"Id": stopped.id, "State": "exited"}
    assert all(set(item) <= {"Id", "State"} for item in listed.values())
