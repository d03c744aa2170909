"""Docker Engine API over its socket, with aiohttp.

Only the reads the agent needs (version, info, list, inspect, events) plus exec for script
checks. Non-blocking, so one slow inspect never stalls the event stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

log = logging.getLogger(__name__)

# Newest API whose answers we parse; older daemons are spoken to at their own version.
MAX_API_VERSION = (1, 43)
# Oldest we need: the fields we read exist since 1.24 (Docker 1.12).
MIN_API_VERSION = (1, 24)


class DockerError(Exception):
    """A failed Docker API call. `transient` errors are worth retrying."""

    def __init__(self, message: str, status: int | None = None, transient: bool = True):
        super().__init__(message)
        self.status = status
        self.transient = transient


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str
    # The process was still running when `timeout` passed; exec_run then waited for it to end.
    timed_out: bool = False


def _version_tuple(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


class DockerClient:
    def __init__(self, host: str, timeout: float = 30.0) -> None:
        self._host = host
        self._timeout = timeout
        self._socket_path = host[len("unix://") :] if host.startswith("unix://") else ""
        if self._socket_path:
            self._base = "http://docker"
        else:
            self._base = "http://" + host.split("://", 1)[1].rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._prefix = ""

    @property
    def host(self) -> str:
        return self._host

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector = (
                aiohttp.UnixConnector(path=self._socket_path)
                if self._socket_path
                else aiohttp.TCPConnector(limit=32)
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> DockerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        allow_404: bool = False,
    ) -> Any:
        url = f"{self._base}{self._prefix}{path}"
        try:
            async with self._client().request(method, url, params=params, json=body) as resp:
                text = await resp.text()
                if resp.status == 404 and allow_404:
                    return None
                if resp.status >= 400:
                    raise DockerError(
                        f"{method} {path}: HTTP {resp.status}: {text.strip()[:200]}",
                        status=resp.status,
                        transient=resp.status >= 500,
                    )
                if not text:
                    return None
                try:
                    return json.loads(text)
                except ValueError:
                    raise DockerError(
                        f"{method} {path}: answer is not JSON: {text[:100]!r}"
                    ) from None
        except TimeoutError as err:  # first: TimeoutError is an OSError since Python 3.3
            raise DockerError(f"{method} {path}: no answer within {self._timeout:g} s") from err
        except (aiohttp.ClientError, OSError) as err:
            raise DockerError(f"{method} {path}: {type(err).__name__}: {err}") from err

    async def negotiate(self) -> str:
        """Pick the API version both sides speak; returns the daemon's version string."""
        self._prefix = ""
        version = await self._request("GET", "/version")
        if not isinstance(version, dict):
            raise DockerError("GET /version: unexpected answer")
        try:
            server = _version_tuple(str(version.get("ApiVersion", "")))
        except ValueError:
            raise DockerError(
                f"GET /version: bad ApiVersion {version.get('ApiVersion')!r}"
            ) from None
        chosen = min(server, MAX_API_VERSION)
        if chosen < MIN_API_VERSION:
            raise DockerError(
                f"Docker API {server[0]}.{server[1]} is older than the {MIN_API_VERSION[0]}."
                f"{MIN_API_VERSION[1]} we need",
                transient=False,
            )
        self._prefix = f"/v{chosen[0]}.{chosen[1]}"
        return str(version.get("Version", "?"))

    async def ping(self) -> None:
        await self._request("GET", "/_ping")

    async def info(self) -> dict[str, Any]:
        info = await self._request("GET", "/info")
        if not isinstance(info, dict):
            raise DockerError("GET /info: unexpected answer")
        return info

    async def list_containers(self) -> list[dict[str, Any]]:
        """Every container, running or not (stopped ones matter for -deregister on-success)."""
        answer = await self._request("GET", "/containers/json", params={"all": "1"})
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
        # Service events exist since API 1.30; an older daemon would refuse the filter.
        types = ["container", "network"] + (["service"] if self.api_version >= (1, 30) else [])
        params = {"filters": json.dumps({"type": types})}
        if since:
            params["since"] = since
        url = f"{self._base}{self._prefix}/events"
        try:
            async with self._client().get(
                url, params=params, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
            ) as resp:
                if resp.status >= 400:
                    text = await resp.text()
                    raise DockerError(
                        f"GET /events: HTTP {resp.status}: {text.strip()[:200]}", status=resp.status
                    )
                yield {"Type": "registrator", "Action": "subscribed"}
                buffer = b""
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if not line.strip():
                            continue
                        try:
                            event = json.loads(line)
                        except ValueError:
                            log.warning(
                                "docker events: skipped a line that is not JSON: %r", line[:100]
                            )
                            continue
                        if isinstance(event, dict):
                            yield event
        except (aiohttp.ClientError, OSError) as err:
            raise DockerError(f"GET /events: {type(err).__name__}: {err}") from err

    async def exec_run(
        self,
        container_id: str,
        command: Sequence[str],
        timeout: float,  # noqa: ASYNC109 - bounds the exec, not this call's caller
    ) -> ExecResult:
        """Run `command` in the container and collect its exit code and output.

        `timeout` (seconds) bounds the wait for its output. Docker cannot kill an exec
        (there is no such endpoint), so a process still running then is waited for, polling
        `GET /exec/{id}/json` once a second until it ends (or the container does), and the
        answer says `timed_out`: a caller never has two of its commands running at once.
        Raises DockerError when Docker cannot be asked.
        """
        created = await self._request(
            "POST",
            f"/containers/{quote(container_id, safe='')}/exec",
            body={"Cmd": list(command), "AttachStdout": True, "AttachStderr": True, "Tty": True},
        )
        exec_id = created.get("Id") if isinstance(created, dict) else None
        if not isinstance(exec_id, str):
            raise DockerError("exec create: no Id in answer")
        url = f"{self._base}{self._prefix}/exec/{exec_id}/start"
        try:
            async with asyncio.timeout(timeout):
                async with self._client().post(url, json={"Detach": False, "Tty": True}) as resp:
                    if resp.status >= 400:
                        raise DockerError(f"exec start: HTTP {resp.status}", status=resp.status)
                    raw = await resp.read()
        except TimeoutError:
            state = await self._request("GET", f"/exec/{exec_id}/json")
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
            output=raw.decode("utf-8", "replace")[-4096:],
        )
