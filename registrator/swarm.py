"""Pure: Swarm's answers about services → SwarmService, and a Swarm service → a Container-like
value the planner can register at its virtual IP.

Only managers can read services (`GET /services/{id}`); everything here is used only where the
agent could. Like containers.py, every field is read defensively.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from registrator.containers import InspectError, as_dict, as_str, parse_env, string_map
from registrator.model import Container, ContainerPort, NetworkAttachment, SwarmPort, SwarmService

LABEL_SERVICE_ID = "com.docker.swarm.service.id"
# The held-services key (and registrator-container Meta) of a service registered at its VIP;
# a container id never contains a colon, so the two kinds of key cannot collide.
VIP_KEY_PREFIX = "swarm-service:"


def _port(raw: Any) -> SwarmPort | None:
    item = as_dict(raw)
    target, published = item.get("TargetPort"), item.get("PublishedPort")
    if not isinstance(target, int) or not 0 < target < 65536:
        return None
    if not isinstance(published, int) or not 0 <= published < 65536:
        published = 0
    return SwarmPort(
        target=target,
        published=published,
        protocol=(as_str(item.get("Protocol")) or "tcp").lower(),
        mode=(as_str(item.get("PublishMode")) or "ingress").lower(),
    )


def _address(cidr: str) -> str:
    try:
        return str(ipaddress.ip_interface(cidr).ip)
    except ValueError:
        return ""


def parse_service(data: Any) -> SwarmService:
    """Turn one `GET /services/{id}` answer into a SwarmService."""
    doc = as_dict(data)
    service_id = as_str(doc.get("ID"))
    if not service_id:
        raise InspectError("service answer has no ID")
    spec = as_dict(doc.get("Spec"))
    container_spec = as_dict(as_dict(spec.get("TaskTemplate")).get("ContainerSpec"))
    endpoint = as_dict(doc.get("Endpoint"))
    # The live Endpoint carries the ports Swarm actually assigned (a published port left to
    # Swarm is 0 in the spec); the spec is the fallback while the service is being created.
    endpoint_spec = as_dict(endpoint.get("Spec")) or as_dict(spec.get("EndpointSpec"))
    raw_ports = endpoint.get("Ports")
    if not isinstance(raw_ports, list):
        raw_ports = endpoint_spec.get("Ports")
    if not isinstance(raw_ports, list):
        raw_ports = []
    ports = tuple(port for port in map(_port, raw_ports) if port is not None)
    virtual_ips: dict[str, str] = {}
    for raw in endpoint.get("VirtualIPs") or []:
        item = as_dict(raw)
        network_id, address = as_str(item.get("NetworkID")), _address(as_str(item.get("Addr")))
        if network_id and address:
            virtual_ips[network_id] = address
    image = as_str(container_spec.get("Image"))
    return SwarmService(
        id=service_id,
        name=as_str(spec.get("Name")) or service_id[:12],
        labels=string_map(spec.get("Labels")),
        container_labels=string_map(container_spec.get("Labels")),
        env=parse_env(container_spec.get("Env")),
        ports=ports,
        endpoint_mode=(as_str(endpoint_spec.get("Mode")) or "vip").lower(),
        virtual_ips=virtual_ips,
        image=image.split("@", 1)[0],
    )


def in_swarm(docker_info: Any) -> bool:
    """Whether the engine (from `GET /info`) is an active member of a swarm."""
    return as_dict(as_dict(docker_info).get("Swarm")).get("LocalNodeState") == "active"


def manager_node_id(docker_info: Any) -> str:
    """This engine's Swarm node id, from `GET /info`, if it is an active manager: only
    managers can read services."""
    swarm = as_dict(as_dict(docker_info).get("Swarm"))
    if not in_swarm(docker_info) or swarm.get("ControlAvailable") is not True:
        return ""
    return as_str(swarm.get("NodeID"))


def task_service_id(container: Container) -> str:
    """The Swarm service a task container belongs to ("" for other containers)."""
    return container.labels.get(LABEL_SERVICE_ID, "").strip()


def vip_key(service_id: str) -> str:
    return f"{VIP_KEY_PREFIX}{service_id}"


def is_vip_key(key: str) -> bool:
    return key.startswith(VIP_KEY_PREFIX)


def vip_container(
    service: SwarmService,
    network_names: Mapping[str, str],
    image_ports: Iterable[ContainerPort] = (),
) -> Container:
    """A Swarm service seen as one container standing at its virtual IPs.

    `network_names` maps the ids of the networks a VIP may be registered on to their names;
    VIPs on other networks (the ingress network) are left out.

    Its metadata is the task template's env and labels, over the service's own (Compose
    `deploy.labels`), so SERVICE_* keys work wherever the stack file puts them. Its ports are
    the published targets and the image's exposed ports (a VIP forwards every port).
    """
    labels = {
        **service.labels,
        **service.container_labels,
        "com.docker.swarm.service.name": service.name,
        LABEL_SERVICE_ID: service.id,
    }
    networks = tuple(
        NetworkAttachment(name=network_names[network_id], ip=ip, network_id=network_id)
        for network_id, ip in sorted(service.virtual_ips.items())
        if network_id in network_names
    )
    return Container(
        id=vip_key(service.id),
        name=service.name,
        image=service.image,
        hostname="",
        labels=labels,
        env=dict(service.env),
        # The planner adds the published targets, as for any task of a Swarm service.
        ports=tuple(image_ports),
        networks=networks,
        network_mode="default",
        running=True,
        paused=False,
        restarting=False,
        exit_code=0,
        swarm_service=service,
    )
