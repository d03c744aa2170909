"""Pure: what a Docker event means to us. Level-triggered, so an event only says which container
(or Swarm service) may have changed; the reconciler then reads the truth.

Event shapes: https://docs.docker.com/engine/api/v1.43/#tag/System/operation/SystemEvents
"""

from __future__ import annotations

from typing import Any

# The container actions after which a container's registrations may differ.
CONTAINER_EVENTS = frozenset(
    {
        "start",
        "die",
        "stop",
        "kill",
        "destroy",
        "remove",  # Podman's name for destroy
        "pause",
        "unpause",
        "restart",
        "rename",
        "update",
        "oom",
        "health_status",
    }
)


def event_container_id(event: dict[str, Any]) -> str | None:
    """The container an event is about, if it is one we reconcile on."""
    kind = event.get("Type")
    action = str(event.get("Action") or event.get("status") or "")
    actor = event.get("Actor") if isinstance(event.get("Actor"), dict) else {}
    assert isinstance(actor, dict)
    if kind == "container":
        # "health_status: healthy" carries its value after a colon.
        if action.split(":", 1)[0].strip() in CONTAINER_EVENTS:
            container_id = actor.get("ID") or event.get("id")
            return str(container_id) if container_id else None
        return None
    if kind == "network" and action in {"connect", "disconnect"}:
        attributes = actor.get("Attributes")
        if isinstance(attributes, dict) and attributes.get("container"):
            return str(attributes["container"])
    return None


def event_service_id(event: dict[str, Any]) -> str | None:
    """The Swarm service a service event (create, update, remove) is about."""
    if event.get("Type") != "service":
        return None
    actor = event.get("Actor")
    service_id = actor.get("ID") if isinstance(actor, dict) else None
    return str(service_id) if service_id else None


def kill_signal(event: dict[str, Any]) -> str | None:
    """The signal a `kill` event sent (dockerd 20.10 gives its number: "15"), else None."""
    if event.get("Type") != "container" or event.get("Action") != "kill":
        return None
    actor = event.get("Actor")
    attributes = actor.get("Attributes") if isinstance(actor, dict) else None
    signal = attributes.get("signal") if isinstance(attributes, dict) else None
    return str(signal) if signal is not None else None


# Linux signal numbers (x86 and arm; Docker gives names or numbers) of the signals a container
# may be stopped with. Unknown names compare as themselves.
_SIGNAL_NUMBERS = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "BUS": 7, "FPE": 8,
    "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15,
    "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22,
    "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29,
    "PWR": 30, "SYS": 31,
}  # fmt: skip


def signal_number(signal: str) -> int | str:
    """ "SIGTERM", "TERM", "sigterm", "15" → 15; anything else as given (upper case)."""
    text = signal.strip().upper()
    if text.isdigit():
        return int(text)
    name = text.removeprefix("SIG")
    return _SIGNAL_NUMBERS.get(name, text)


def is_subscribed(event: dict[str, Any]) -> bool:
    """The marker DockerClient.events yields once the stream is open (not a Docker event)."""
    return event.get("Type") == "registrator"


def since_from_time_nano(time_nano: int) -> str:
    """Docker's `since` takes `seconds.nanoseconds`; resuming from the last event's own time
    may repeat it, which level-triggered reconciles make harmless, and never skips one."""
    return f"{time_nano // 1_000_000_000}.{time_nano % 1_000_000_000:09d}"
