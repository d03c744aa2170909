"""Docker Engine API over its socket, with aiohttp.

Only the reads the agent needs (version, info, list, inspect, events) plus exec for script
checks. Non-blocking, so one slow inspect never stalls the event stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Unpack
from urllib.parse import quote

import aiohttp

from registrator.apiclient import APIError, JSONClient, RequestOptions

log = logging.getLogger(__name__)

# Newest API the agent is tested against (Docker Engine 29.7.2): every field it reads exists
# there (per-network addresses only: the top-level NetworkSettings.IPAddress is gone at 1.44+).
MAX_API_VERSION = (1, 55)
# Oldest we need: the fields we read exist since 1.24 (Docker 1.12).
MIN_API_VERSION = (1, 24)
# The events stream framing we parse (one JSON object per line). From API 1.52 Docker chooses
# between newline-delimited JSON and JSON text sequences (RFC 7464) by this header.
EVENTS_ACCEPT = "application/x-ndjson"
# Docker: `client version 1.43 is too old. Minimum supported API version is 1.44` (or `is too
# new. Maximum supported API version is ...`), with HTTP 400. The daemon changed underneath.
_VERSION_REFUSED = re.compile(r"client version \S+ is too (old|new)", re.IGNORECASE)
# Docker: 404 `No such container: x`; Podman: HTTP 500 `no such container` (and `no such
# object` from its generic inspect). Either way the container is gone, Docker is not down.
_NO_SUCH = re.compile(r"no such (container|object|image)", re.IGNORECASE)


class DockerError(APIError):
    """A failed Docker API call. `transient` errors are worth retrying."""

    @property
    def gone(self) -> bool:
        """The object asked about does not exist (any engine's status and wording)."""
        return self.status == 404 or bool(_NO_SUCH.search(self.body))

    @property
    def version_refused(self) -> bool:
        """The daemon refused the API version this client speaks (it was up- or downgraded)."""
        return self.status == 400 and bool(_VERSION_REFUSED.search(self.body))


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str
    # The process was still running when `timeout` passed; exec_run then waited for it to end.
    timed_out: bool = False


_LISTED_FIELDS = frozenset({"Id", "State"})


def _listed_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Called for every JSON object, nested ones included: those keep none of these keys and
    # their parents drop them anyway.
    return {key: value for key, value in pairs if key in _LISTED_FIELDS}


def _version_tuple(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def _text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def choose_api_version(server: tuple[int, int], server_min: tuple[int, int]) -> tuple[int, int]:
    """The newest API version both the daemon (`server_min`..`server`) and the agent
    (MIN_API_VERSION..MAX_API_VERSION) speak; DockerError (not transient) if there is none."""
    chosen = min(server, MAX_API_VERSION)
    if chosen < max(server_min, MIN_API_VERSION):
        raise DockerError(
            f"Docker speaks API {_text(server_min)} to {_text(server)}, registrator speaks"
            f" {_text(MIN_API_VERSION)} to {_text(MAX_API_VERSION)}: no version in common"
            + (
                " (the daemon's floor is raised by DOCKER_MIN_API_VERSION or min-api-version)"
                if server_min > MAX_API_VERSION
                else ""
            ),
            transient=False,
        )
    return chosen


async def _json_lines(stream: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The objects of a newline-delimited JSON stream, as they arrive."""
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            # A record separator (RFC 7464 framing) would only be there if the daemon ignored
            # our Accept header; tolerate it rather than drop every event.
            line = line.strip().lstrip(b"\x1e")
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                log.warning("docker events: skipped a line that is not JSON: %r", line[:100])
                continue
            if isinstance(event, dict):
                yield event


# Docker's multiplexed stream (no TTY): each frame is an 8-byte header, the stream (0 stdin,
# 1 stdout, 2 stderr), three zero bytes and the payload length (big-endian uint32), then the
# payload. Docker Engine API, "Attach to a container", Stream format.
_FRAME_HEADER = 8
# Output kept from a run; Consul truncates a check's output at 4 KiB anyway.
_OUTPUT_KEPT = 4 * 4096


class StreamFrames:
    """Demultiplexes Docker's attach/exec stream as chunks arrive (frames may be split across
    chunks): every frame's payload, stdout and stderr alike, in arrival order."""

    def __init__(self) -> None:
        self._pending = b""
        self._payload = bytearray()

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk
        start = 0
        while len(data) - start >= _FRAME_HEADER:
            size = int.from_bytes(data[start + 4 : start + _FRAME_HEADER], "big")
            end = start + _FRAME_HEADER + size
            if end > len(data):
                break
            self._payload += data[start + _FRAME_HEADER : end]
            start = end
        self._pending = data[start:]
        if len(self._payload) > _OUTPUT_KEPT:
            del self._payload[:-_OUTPUT_KEPT]

    def output(self) -> bytes:
        """The payloads so far, and what arrived of a last frame cut short (its header
        complete); an incomplete header is dropped."""
        tail = self._pending[_FRAME_HEADER:] if len(self._pending) >= _FRAME_HEADER else b""
        return bytes(self._payload) + tail


def stalled_exec(state: object, waited: float) -> DockerError | None:
    """What it means that an exec's output had not ended after `waited` seconds, given its
    `GET /exec/{id}/json` answer then: None if the process is still running (it overran),
    else the error to raise: it had ended, so Docker stalled, not the process."""
    if isinstance(state, dict) and state.get("Running") is True:
        return None
    exit_code = state.get("ExitCode") if isinstance(state, dict) else None
    return DockerError(
        f"exec start: Docker did not end the output within {waited:g} s although the process"
        f" had ended (exit code {exit_code}); Docker stalled, not the probe"
    )


class DockerClient(JSONClient):
    error = DockerError

    def __init__(self, host: str, timeout: float = 30.0) -> None:
        super().__init__(timeout)
        self._host = host
        self._socket_path = host[len("unix://") :] if host.startswith("unix://") else ""
        if self._socket_path:
            self._base = "http://docker"
        else:
            self._base = "http://" + host.split("://", 1)[1].rstrip("/")
        self._prefix = ""
        self._negotiating = asyncio.Lock()

    @property
    def host(self) -> str:
        return self._host

    def _connector(self) -> aiohttp.BaseConnector:
        if self._socket_path:
            return aiohttp.UnixConnector(path=self._socket_path)
        return aiohttp.TCPConnector(limit=32)

    async def _request(
        self, method: str, path: str, *, allow_404: bool = False, **options: Unpack[RequestOptions]
    ) -> Any:
        """One versioned call; renegotiates once and repeats it if the daemon refuses the
        version. With `allow_404`, a gone object (any status or wording) answers None."""
        for attempt in range(2):
            prefix = self._prefix
            try:
                return await self._exchange(method, f"{self._base}{prefix}{path}", path, **options)
            except DockerError as err:
                if allow_404 and err.gone:
                    return None
                if err.gone and err.transient:
                    # Podman says "no such container" with HTTP 500: not an outage.
                    raise DockerError(str(err), err.status, False, err.body) from err
                if attempt == 0 and prefix and err.version_refused:
                    await self._renegotiate(prefix)
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _renegotiate(self, refused_prefix: str) -> None:
        async with self._negotiating:
            if self._prefix == refused_prefix:  # not already done by a concurrent call
                old = refused_prefix[2:]
                version = await self.negotiate()
                log.warning(
                    "Docker refused API %s; now speaking %s to Docker %s",
                    old,
                    _text(self.api_version),
                    version,
                )

    async def negotiate(self) -> str:
        """Pick the API version both sides speak; returns the daemon's version string.

        Raises a non-transient DockerError naming both ranges when there is none.
        """
        version = await self._exchange("GET", f"{self._base}/version", "/version")
        if not isinstance(version, dict):
            raise DockerError("GET /version: unexpected answer")
        try:
            server = _version_tuple(str(version.get("ApiVersion", "")))
            # Absent before API 1.25; such a daemon speaks everything down to 1.12.
            server_min = _version_tuple(str(version.get("MinAPIVersion") or "1.12"))
        except ValueError:
            raise DockerError(
                f"GET /version: bad ApiVersion {version.get('ApiVersion')!r}"
                f" or MinAPIVersion {version.get('MinAPIVersion')!r}"
            ) from None
        self._prefix = f"/v{_text(choose_api_version(server, server_min))}"
        return str(version.get("Version", "?"))

    async def ping(self) -> None:
        await self._request("GET", "/_ping")

    async def info(self) -> dict[str, Any]:
        info = await self._request("GET", "/info")
        if not isinstance(info, dict):
            raise DockerError("GET /info: unexpected answer")
        return info

    async def list_containers(self) -> list[dict[str, Any]]:
        """Every container, running or not (stopped ones matter for -deregister on-success),
        as `{"Id": ..., "State": ...}`: the only fields a full reconcile reads from the list.

        The other fields (labels, ports, networks, mounts: about 1 KB of JSON per container)
        are dropped while decoding, so the answer for 500 containers never exists as ~2 MB of
        Python objects (which would set the agent's peak RSS); see docs/performance.md.
        """
        answer = await self._request(
            "GET", "/containers/json", params={"all": "1"}, object_pairs_hook=_listed_fields
        )
        if not isinstance(answer, list):
            raise DockerError("GET /containers/json: unexpected answer")
        return [
            item for item in answer if isinstance(item, dict) and isinstance(item.get("Id"), str)
        ]

    async def _document(self, path: str) -> dict[str, Any] | None:
        """One object's JSON document, or None if Docker has no such object (404)."""
        answer = await self._request("GET", path, allow_404=True)
        if answer is not None and not isinstance(answer, dict):
            raise DockerError(f"GET {path}: unexpected answer")
        return answer

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        """The container's inspect document, or None if it no longer exists."""
        return await self._document(f"/containers/{quote(container_id, safe='')}/json")

    async def service(self, service_id: str) -> dict[str, Any] | None:
        """A Swarm service's inspect document (managers only), or None if it is gone."""
        return await self._document(f"/services/{quote(service_id, safe='')}")

    async def services(self) -> list[dict[str, Any]]:
        """Every Swarm service (managers only)."""
        answer = await self._request("GET", "/services")
        if not isinstance(answer, list):
            raise DockerError("GET /services: unexpected answer")
        return [item for item in answer if isinstance(item, dict)]

    async def networks(self) -> list[dict[str, Any]]:
        answer = await self._request("GET", "/networks")
        if not isinstance(answer, list):
            raise DockerError("GET /networks: unexpected answer")
        return [item for item in answer if isinstance(item, dict)]

    async def node(self, node_id: str) -> dict[str, Any]:
        """A Swarm node's inspect document (managers only)."""
        answer = await self._request("GET", f"/nodes/{quote(node_id, safe='')}")
        if not isinstance(answer, dict):
            raise DockerError(f"node {node_id[:12]}: unexpected answer")
        return answer

    async def nodes(self) -> list[dict[str, Any]]:
        """Every Swarm node (managers only; fails without a quorum)."""
        answer = await self._request("GET", "/nodes")
        if not isinstance(answer, list):
            raise DockerError("GET /nodes: unexpected answer")
        return [item for item in answer if isinstance(item, dict)]

    async def image(self, reference: str) -> dict[str, Any] | None:
        """An image's inspect document, or None if this engine does not have it."""
        return await self._document(f"/images/{quote(reference, safe='/:@')}/json")

    @property
    def api_version(self) -> tuple[int, int]:
        """The negotiated API version ((0, 0) before `negotiate`)."""
        if not self._prefix:
            return (0, 0)
        return _version_tuple(self._prefix[2:])

    async def events(self, since: str | None) -> AsyncIterator[dict[str, Any]]:
        """Container, network and (API 1.30+) service events, from `since` (Docker's
        `seconds.nanoseconds`) on.

        Yields until the daemon closes the stream; raises DockerError if it breaks.
        """
        for attempt in range(2):
            prefix = self._prefix
            # Service events exist since API 1.30; an older daemon would refuse the filter.
            types = ["container", "network"] + (["service"] if self.api_version >= (1, 30) else [])
            params = {"filters": json.dumps({"type": types})}
            if since:
                params["since"] = since
            refused: DockerError | None = None
            try:
                async with self._client().get(
                    f"{self._base}{prefix}/events",
                    params=params,
                    headers={"Accept": EVENTS_ACCEPT},
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                ) as resp:
                    if resp.status >= 400:
                        text = await resp.text()
                        refused = DockerError(
                            f"GET /events: HTTP {resp.status}: {text.strip()[:300]}",
                            status=resp.status,
                            body=text[:1000],
                        )
                        if not (attempt == 0 and prefix and refused.version_refused):
                            raise refused
                    else:
                        yield {"Type": "registrator", "Action": "subscribed"}
                        async for event in _json_lines(resp.content):
                            yield event
                        return
            except (aiohttp.ClientError, OSError) as err:
                raise DockerError(f"GET /events: {type(err).__name__}: {err}") from err
            await self._renegotiate(prefix)

    async def exec_run(
        self,
        container_id: str,
        command: Sequence[str],
        timeout: float,  # noqa: ASYNC109 - bounds the exec, not this call's caller
    ) -> ExecResult:
        """Run `command` in the container and collect its exit code and output (stdout and
        stderr in the order written, the last 4096 characters).

        `timeout` (seconds) bounds the wait for its output; the session's own per-request
        timeout does not apply (a probe may run longer). Docker cannot kill an exec (there
        is no such endpoint), so a process still running then is waited for, polling
        `GET /exec/{id}/json` once a second until it ends (or the container does), and the
        answer says `timed_out`: a caller never has two of its commands running at once.
        Raises DockerError when Docker cannot be asked, or when the process had ended by
        then but Docker never delivered its output (a stalled daemon, not a slow probe).
        Docker Engine API: "Create an exec instance", "Start an exec instance".
        """
        created = await self._request(
            "POST",
            f"/containers/{quote(container_id, safe='')}/exec",
            # No TTY: a TTY turns every \n of the output into \r\n (Consul shows them) and
            # tells the script it talks to a terminal; the stream is then multiplexed.
            body={"Cmd": list(command), "AttachStdout": True, "AttachStderr": True, "Tty": False},
        )
        exec_id = created.get("Id") if isinstance(created, dict) else None
        if not isinstance(exec_id, str):
            raise DockerError("exec create: no Id in answer")
        url = f"{self._base}{self._prefix}/exec/{exec_id}/start"
        frames = StreamFrames()
        try:
            async with asyncio.timeout(timeout):
                async with self._client().post(
                    url,
                    json={"Detach": False, "Tty": False},
                    # The run is bounded by `timeout` above, not by the session's total.
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                ) as resp:
                    if resp.status >= 400:
                        raise DockerError(f"exec start: HTTP {resp.status}", status=resp.status)
                    async for chunk in resp.content.iter_any():
                        frames.feed(chunk)
        except TimeoutError:
            state = await self._request("GET", f"/exec/{exec_id}/json")
            stalled = stalled_exec(state, timeout)
            if stalled is not None:
                raise stalled from None
            while isinstance(state, dict) and state.get("Running") is True:
                await asyncio.sleep(1.0)
                state = await self._request("GET", f"/exec/{exec_id}/json")
            exit_code = state.get("ExitCode") if isinstance(state, dict) else None
            return ExecResult(
                exit_code if isinstance(exit_code, int) else 2,
                f"timed out after {timeout:g} s",
                timed_out=True,
            )
        except (aiohttp.ClientError, OSError) as err:
            raise DockerError(f"exec start: {err}") from err
        state = await self._request("GET", f"/exec/{exec_id}/json")
        exit_code = state.get("ExitCode") if isinstance(state, dict) else None
        return ExecResult(
            exit_code=exit_code if isinstance(exit_code, int) else 2,
            output=frames.output().decode("utf-8", "replace")[-4096:],
        )
