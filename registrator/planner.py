"""Pure: containers → desired Services; desired vs held → Plan.

No I/O here. Everything the planner needs from outside (node name, the default address,
options) arrives in a PlanContext, and everything it cannot honour leaves as a Problem.
Which address and port each service is reached at is endpoints.py's choice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from registrator import checks as checks_mod
from registrator.connect import build_connect
from registrator.endpoints import Endpoint, address_from_label, container_endpoints, on_owner_stack
from registrator.ids import unaddressable
from registrator.labels import (
    Metadata,
    address_override,
    is_true_ignore,
    own_key_problems,
    parse_tags,
    problems_with_keys,
    service_fields,
    service_meta,
    service_metadata,
    unique,
)
from registrator.model import (
    META_CONTAINER,
    META_NODE,
    META_SOURCE,
    OWNER_SOURCE,
    Container,
    HeldService,
    Plan,
    Problem,
    Service,
)
from registrator.payload import payload_hash
from registrator.reaping import heartbeat_service_id
from registrator.settings import DeregisterMode, Settings
from registrator.swarm import is_vip_key, task_service_id
from registrator.vocabulary import expand_template

LABEL_SWARM_SERVICE = "com.docker.swarm.service.name"
LABEL_STACK_NAMESPACE = "com.docker.stack.namespace"
LABEL_COMPOSE_SERVICE = "com.docker.compose.service"


@dataclass(frozen=True)
class PlanContext:
    """Who this node is, and the options: every option the planner reads is a Settings field,
    declared once there (settings.OPTIONS) and read here as `ctx.settings.<field>`."""

    node: str
    default_address: str = ""  # the node's address when nothing more specific is known
    settings: Settings = field(default_factory=Settings)


@dataclass(frozen=True)
class ContainerPlan:
    services: tuple[Service, ...]
    problems: tuple[Problem, ...] = ()


@dataclass
class _Problems:
    container: str
    items: list[Problem] = field(default_factory=list)

    def add(self, key: str, reason: str) -> None:
        self.items.append(Problem(self.container, key, reason))


def default_service_name(container: Container) -> str:
    """Swarm service (stack prefix removed), else compose service, else image base name.

    Never blank: Consul refuses an empty name, and a blank one is no name at all.
    """
    swarm = container.labels.get(LABEL_SWARM_SERVICE, "").strip()
    if swarm:
        namespace = container.labels.get(LABEL_STACK_NAMESPACE, "")
        if namespace and swarm.startswith(f"{namespace}_"):
            return swarm[len(namespace) + 1 :].strip() or swarm
        return swarm
    compose = container.labels.get(LABEL_COMPOSE_SERVICE, "").strip()
    if compose:
        return compose
    return image_base_name(container.image).strip() or container.name


def image_base_name(image: str) -> str:
    """`registry:5000/org/app:1.2@sha256:…` → `app`; an image id gives ""."""
    ref = image.split("@", 1)[0]
    if ref.startswith("sha256:") or _is_hex_id(ref):
        return ""
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def _is_hex_id(text: str) -> bool:
    return len(text) >= 12 and all(c in "0123456789abcdef" for c in text)


def keeps_registrations(container: Container, mode: DeregisterMode) -> bool:
    """-deregister on-success: a container that failed by itself keeps its services.

    Exit codes above 128 mean "killed by signal 128+n" (docker stop, OOM kill): that is an
    operator's or the kernel's decision, not the application failing, so it deregisters.
    """
    if mode is not DeregisterMode.ON_SUCCESS or container.running:
        return False
    return 0 < container.exit_code <= 128


def left_to_vip(container: Container, ctx: PlanContext) -> bool:
    """-swarm-vip: this task container's service is registered at its VIP instead.

    Where the service cannot be read (a worker), every task is left to the managers: the
    endpoint mode is unknown there, and registering the task too would put the task address
    next to the VIP under one name.
    """
    if not ctx.settings.swarm_vip or is_vip_key(container.id) or not task_service_id(container):
        return False
    service = container.swarm_service
    return service is None or service.endpoint_mode == "vip"


def desired_services(container: Container, ctx: PlanContext) -> ContainerPlan:
    """The services this container should have in Consul right now."""
    if not container.running or container.paused or container.restarting:
        return ContainerPlan(())
    if container.network_owner_ref:
        stacked, problem = on_owner_stack(container)
        if stacked is None:
            wants = container.ports or service_metadata(container, None).get("PORT").strip()
            # A helper with nothing to register is not worth a warning.
            return ContainerPlan((), (problem,) if problem and wants else ())
        container = stacked
    if left_to_vip(container, ctx):
        return ContainerPlan(())
    problems = _Problems(container.name, list(problems_with_keys(container)))
    base = service_metadata(container, None)
    if is_true_ignore(base.get("IGNORE")):
        return ContainerPlan((), tuple(problems.items))

    endpoints = container_endpoints(container, ctx, base, problems.items)
    label_address = address_from_label(container, ctx, problems.items)
    # What the container's own labels and env vars got wrong so far applies to each service.
    container_flaws = own_key_problems(problems.items)
    default_name = default_service_name(container)
    global_tags = parse_tags(expand_template(ctx.settings.tags, container, ctx.node))

    wanted: list[tuple[Endpoint, Metadata, str]] = []
    for endpoint in endpoints:
        metadata = service_metadata(container, endpoint.container_port, endpoint.protocol)
        if is_true_ignore(metadata.get("IGNORE")):
            continue
        if ctx.settings.explicit and not metadata.get("NAME").strip():
            continue
        service_id = _service_id(container, ctx, metadata, endpoint, len(endpoints) > 1)
        wanted.append((endpoint, metadata, service_id))
    ids = distinct_ids([(service_id, _suffix(endpoint)) for endpoint, _, service_id in wanted])
    _report_renamed(wanted, ids, problems)

    services: list[Service] = []
    for (endpoint, metadata, _), service_id in zip(wanted, ids, strict=True):
        service = _service(
            container,
            ctx,
            metadata,
            endpoint,
            service_id,
            len(endpoints) > 1,
            default_name,
            global_tags,
            label_address,
            problems,
            container_flaws,
        )
        if service is None:
            continue
        refused = _unaddressable(service)
        if refused:
            problems.add(metadata.origin("ID"), f"{refused}; not registered")
            continue
        services.append(service)
    return ContainerPlan(tuple(services), tuple(problems.items))


def _unaddressable(service: Service) -> str:
    """Why Consul could never deregister (or update) what this registration writes, if so."""
    named = [("service id", service.id)] + [("check id", c.check_id) for c in service.checks]
    for what, value in named:
        reason = unaddressable(value)
        if reason:
            shown = value if len(value) <= 80 else f"{value[:80]}…"
            return f"{what} {shown!r} {reason}"
    return ""


def _suffix(endpoint: Endpoint) -> str:
    """What tells one port of a container from its others: `80`, `53:udp`, `9:sctp`."""
    protocol = "" if endpoint.protocol == "tcp" else f":{endpoint.protocol}"
    return f"{endpoint.container_port}{protocol}"


def _service_id(
    container: Container, ctx: PlanContext, metadata: Metadata, endpoint: Endpoint, several: bool
) -> str:
    service_id = metadata.get("ID").strip()
    if service_id and several and "ID" not in metadata.port_scoped:
        # A container-wide SERVICE_ID on several ports would make every port overwrite the
        # previous one in Consul; suffixing keeps each registration distinct.
        return f"{service_id}:{_suffix(endpoint)}"
    if service_id:
        return service_id
    # A VIP registration belongs to the swarm, not to the node whose agent writes it: the
    # next leader's agent must write the same id, not a second entry.
    owner = "swarm" if is_vip_key(container.id) else ctx.node
    return f"{owner}:{container.name}:{_suffix(endpoint)}"


def distinct_ids(wanted: Sequence[tuple[str, str]]) -> list[str]:
    """One id per registration of a container, none shared: `wanted` is (id, suffix) pairs.

    Registrations that want the same id (`SERVICE_53_ID=dns` applies to 53/tcp and 53/udp;
    `SERVICE_80_ID=web` and `SERVICE_443_ID=web`) each get their own suffix appended, all of
    them, so which one keeps the bare id never depends on order. Suffixes are distinct per
    container, so each round ends the clashes it started with; a result that clashes with
    another id wanted as such is suffixed again in the next round.
    """
    ids = [service_id for service_id, _ in wanted]
    for _ in range(len(ids)):
        counts = Counter(ids)
        clashing = [index for index, service_id in enumerate(ids) if counts[service_id] > 1]
        if not clashing:
            break
        for index in clashing:
            ids[index] = f"{ids[index]}:{wanted[index][1]}"
    return ids


def _report_renamed(
    wanted: Sequence[tuple[Endpoint, Metadata, str]], ids: Sequence[str], problems: _Problems
) -> None:
    renamed: dict[str, list[str]] = {}
    origins: dict[str, list[str]] = {}
    for (endpoint, metadata, service_id), final in zip(wanted, ids, strict=True):
        if final != service_id:
            renamed.setdefault(service_id, []).append(
                f"{endpoint.container_port}/{endpoint.protocol} as {final!r}"
            )
            keys = origins.setdefault(service_id, [])
            if metadata.origin("ID") not in keys:
                keys.append(metadata.origin("ID"))
    for service_id, registrations in renamed.items():
        problems.add(
            ", ".join(origins[service_id]),
            f"service id {service_id!r} is wanted by several ports; each keeps a registration "
            f"of its own: {', '.join(registrations)}",
        )


def _service(
    container: Container,
    ctx: PlanContext,
    metadata: Metadata,
    endpoint: Endpoint,
    service_id: str,
    several: bool,
    default_name: str,
    global_tags: list[str],
    label_address: str,
    problems: _Problems,
    container_flaws: Sequence[Problem] = (),
) -> Service | None:
    udp = endpoint.protocol == "udp"
    name = metadata.get("NAME").strip() or default_name
    if several and "NAME" not in metadata.port_scoped:
        name = f"{name}-{endpoint.container_port}"

    own_address, address_problems = address_override(
        metadata, container, ctx.settings.use_ip_from_label
    )
    problems.items.extend(address_problems)
    address = own_address or label_address or endpoint.address
    if not address:
        problems.add(
            "-ip",
            f"port {endpoint.container_port}/{endpoint.protocol}: no address to register it "
            "at (the Swarm node, the Consul agent and the host gave none that is not loopback; "
            "see the startup warning): not registered until -ip (REGISTRATOR_IP) is set",
        )
        return None

    fields = service_fields(metadata, container, ctx.node)
    problems.items.extend(fields.problems)
    tags = fields.tags + global_tags + (["udp"] if udp else [])
    meta, meta_problems = service_meta(metadata, container)
    problems.items.extend(meta_problems)
    meta.update({META_SOURCE: OWNER_SOURCE, META_NODE: ctx.node, META_CONTAINER: container.id})
    connect = build_connect(metadata, container)
    problems.items.extend(connect.problems)
    built = checks_mod.build_checks(
        metadata,
        service_id,
        checks_mod.Target(address, endpoint.port),
        container,
        ctx.settings,
        node_heartbeat=heartbeat_service_id(ctx.node) if ctx.settings.node_ttl else "",
        # Script checks run inside the container; a VIP has none to run them in.
        in_container=not is_vip_key(container.id),
        # Visible in Consul, not only in the log (the misconfigured check).
        flaws=[
            *container_flaws,
            *address_problems,
            *fields.problems,
            *meta_problems,
            *connect.problems,
        ],
    )
    problems.items.extend(built.problems)
    return Service(
        id=service_id,
        name=name,
        address=address,
        port=endpoint.port,
        tags=tuple(unique(tags)),
        meta=meta,
        container_id=container.id,
        container_name=container.name,
        checks=built.checks,
        connect=connect.connect,
        script=built.script,
        script_interval=built.script_interval,
        script_timeout=built.script_timeout,
        weights=fields.weights,
        enable_tag_override=fields.enable_tag_override,
        # A per-container address (SERVICE_IP, -useIpFromLabel) replaces the network's.
        tagged_addresses={} if address != endpoint.address else endpoint.tagged_addresses,
    )


def plan_changes(
    desired: Iterable[Service], held: Mapping[str, HeldService], keep: bool = False
) -> Plan:
    """What to write so Consul holds `desired` for one container (or for all of them)."""
    if keep:
        return Plan()
    wanted = {service.id: service for service in desired}
    register = tuple(
        service for service in wanted.values() if not _matches(held.get(service.id), service)
    )
    deregister = tuple(sorted(service_id for service_id in held if service_id not in wanted))
    return Plan(register=register, deregister=deregister)


def _matches(held: HeldService | None, service: Service) -> bool:
    return (
        held is not None
        and held.payload_hash == payload_hash(service)
        and held.name == service.name
        and held.address == service.address
        and held.port == service.port
    )
