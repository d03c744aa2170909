"""Reads the host facts the address chain needs (registrator.addresses decides).

Only reads: two kernel tables of this process's network namespace and Docker's network list.
No packet is sent, so finding the host's address cannot reach anything.
"""

from __future__ import annotations

import logging
from pathlib import Path

from registrator.addresses import (
    bridge_gateways,
    in_host_namespace,
    local_addresses,
    parse_routes,
    primary_address,
)
from registrator.backends import DockerAPI
from registrator.docker import DockerError

log = logging.getLogger(__name__)

PROC_NET = Path("/proc/net")


async def host_address(docker: DockerAPI, proc_net: Path = PROC_NET) -> str:
    """The host's primary address if this process runs in the Docker host's network
    namespace, else "" (also when the engine is remote: its host is not ours)."""
    if not docker.host.startswith("unix://"):
        return ""
    try:
        routes = parse_routes((proc_net / "route").read_text(encoding="ascii", errors="replace"))
        local = local_addresses(
            (proc_net / "fib_trie").read_text(encoding="ascii", errors="replace")
        )
    except OSError as err:
        log.debug("cannot read the routing tables: %s", err)
        return ""
    try:
        gateways = bridge_gateways(await docker.networks())
    except DockerError as err:
        log.debug("cannot list Docker networks: %s", err)
        return ""
    if not in_host_namespace(local, gateways):
        return ""
    return primary_address(routes, local)
