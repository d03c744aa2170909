"""A small typed client for the Consul agent HTTP API (aiohttp + tenacity).

Only agent endpoints: registrations belong to the local agent (it runs the checks and
anti-entropy syncs them to the catalog), and each of them exists since Consul 1.0, so any
Consul >= 1.10 works. Transient failures (connection refused, timeouts, 5xx) are retried a
few times with backoff; 4xx answers are never retried, since sending the same request again
cannot change Consul's mind.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any, Unpack

import aiohttp
import yarl
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from registrator.apiclient import APIError, JSONClient, RequestOptions
from registrator.ids import path_segment
from registrator.option_values import ConsulEndpoint

# What the callers of `services()` read of an entry (the reconciler's held_from_agent and
# foreign_holder, the reaper's heartbeats_from_agent and owned_by_node).
_ENTRY_FIELDS = frozenset({"ID", "Service", "Address", "Port", "Kind", "Meta"})


def _entry_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Called for every JSON object, innermost first. An entry is the object whose "ID" is a
    # string and whose "Meta" is an object: never Meta itself (string values only), nor the
    # answer's top level (its values are entries); anything else nested inside an entry
    # (Weights, TaggedAddresses, Proxy) is dropped with it, whatever it keeps.
    answer = dict(pairs)
    if isinstance(answer.get("ID"), str) and isinstance(answer.get("Meta"), dict):
        return {key: value for key, value in pairs if key in _ENTRY_FIELDS}
    return answer


class ConsulError(APIError):
    """A failed Consul call. `transient` errors are worth retrying later."""

    @property
    def forbidden(self) -> bool:
        """The ACL token lacks a permission (or is unknown): an operator can change that at
        run time (widen the policy, rotate the token), so it is retried later, not memoised."""
        return self.status in {401, 403}

    @property
    def unknown_check(self) -> bool:
        """A TTL update for a check the agent does not have: Consul lost its state (restarted
        without data) or the service was removed behind our back. Consul answers 404 "Unknown
        check ID" (older agents: 500 "does not have associated TTL")."""
        text = str(self)
        return self.status is not None and (
            self.status == 404 or "does not have associated TTL" in text or "Unknown check" in text
        )


def _is_transient(err: BaseException) -> bool:
    return isinstance(err, ConsulError) and err.transient


class ConsulClient(JSONClient):
    error = ConsulError

    def __init__(
        self,
        endpoint: ConsulEndpoint,
        *,
        token: str = "",
        token_file: str = "",
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
    ) -> None:
        super().__init__(timeout)
        self.endpoint = endpoint
        self._token = token
        # CONSUL_HTTP_TOKEN_FILE is read again when it changes (a rotated token), checked by
        # its stat before each request: a rename over it or a rewrite in place both show.
        self._token_file = token_file
        self._token_stamp: tuple[int, int, int] | None = None
        self._ssl = ssl_context
        self._attempts = attempts
        self.requests = 0  # answered or failed HTTP exchanges, for metrics and benchmarks
        self.writes = 0

    def _connector(self) -> aiohttp.BaseConnector:
        if self.endpoint.scheme == "unix":
            return aiohttp.UnixConnector(path=self.endpoint.socket_path)
        return aiohttp.TCPConnector(limit=32, ssl=self._ssl if self._ssl else True)

    def _request_headers(self) -> dict[str, str] | None:
        # Per request, not per session: the token can change while the agent runs.
        token = self.token()
        return {"X-Consul-Token": token} if token else None

    def token(self) -> str:
        """The token to send: CONSUL_HTTP_TOKEN, or the token file's content as it is now
        (an unreadable or empty file keeps the last token read, and says why in the answer
        Consul gives to the old one)."""
        if not self._token_file:
            return self._token
        try:
            info = os.stat(self._token_file)
        except OSError:
            return self._token
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp != self._token_stamp:
            try:
                with open(self._token_file, encoding="utf-8") as handle:
                    token = handle.read().strip()
            except OSError:
                return self._token
            self._token_stamp = stamp
            if token:
                self._token = token
        return self._token

    def _transient_status(self, status: int) -> bool:
        # 429: the agent's rate limit; the same request is welcome a little later.
        return status >= 500 or status == 429

    async def _once(self, method: str, path: str, **options: Unpack[RequestOptions]) -> Any:
        self.requests += 1
        if method != "GET":
            self.writes += 1
        # encoded=True: the path is already percent-encoded (ids via path_segment), and yarl
        # would otherwise decode %2E%2E and drop the segment, deregistering another id.
        url = yarl.URL(f"{self.endpoint.base_url}{path}", encoded=True)
        return await self._exchange(method, url, path, **options)

    async def _call(self, method: str, path: str, **options: Unpack[RequestOptions]) -> Any:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.1, max=2.0) + wait_random(0, 0.1),
            retry=retry_if_exception(_is_transient),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(method, path, **options)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def agent_self(self) -> dict[str, Any]:
        answer = await self._call("GET", "/v1/agent/self")
        if not isinstance(answer, dict):
            raise ConsulError("GET /v1/agent/self: unexpected answer")
        return answer

    async def services(self) -> dict[str, dict[str, Any]]:
        """`GET /v1/agent/services`: service id → the entry's ID, Service, Address, Port,
        Kind and Meta (as Consul gives them; Kind only on a proxy or gateway).

        The other fields (Tags, Weights, TaggedAddresses, Proxy...) are dropped while
        decoding: at 500 services they would be ~0.6 MB of objects nobody reads, at the
        agent's peak; see docs/performance.md.
        """
        answer = await self._call("GET", "/v1/agent/services", object_pairs_hook=_entry_fields)
        if not isinstance(answer, dict):
            raise ConsulError("GET /v1/agent/services: unexpected answer")
        return {k: v for k, v in answer.items() if isinstance(v, dict)}

    async def service(self, service_id: str) -> dict[str, Any] | None:
        """`GET /v1/agent/service/:id`: the agent's entry for one service id, None if it has
        none (HTTP 404)."""
        try:
            answer = await self._call("GET", f"/v1/agent/service/{path_segment(service_id)}")
        except ConsulError as err:
            if err.status == 404:
                return None
            raise
        if not isinstance(answer, dict):
            raise ConsulError("GET /v1/agent/service: unexpected answer")
        return answer

    async def checks(self) -> dict[str, dict[str, Any]]:
        """`GET /v1/agent/checks`: check id → the check (Status, Notes, ServiceID, ...)."""
        answer = await self._call("GET", "/v1/agent/checks")
        if not isinstance(answer, dict):
            raise ConsulError("GET /v1/agent/checks: unexpected answer")
        return {k: v for k, v in answer.items() if isinstance(v, dict)}

    async def register(self, body: Mapping[str, Any]) -> None:
        # replace-existing-checks: the registration is whole, so a check removed from the
        # labels disappears from Consul instead of lingering.
        await self._call(
            "PUT",
            "/v1/agent/service/register",
            body=dict(body),
            params={"replace-existing-checks": "true"},
        )

    async def deregister(self, service_id: str) -> None:
        try:
            await self._call("PUT", f"/v1/agent/service/deregister/{path_segment(service_id)}")
        except ConsulError as err:
            # Already gone is what we wanted; Consul says 404 (older versions: 500 "Unknown").
            if err.status == 404 or "Unknown service" in str(err):
                return
            raise

    async def update_check(self, check_id: str, status: str, output: str) -> None:
        await self._call(
            "PUT",
            f"/v1/agent/check/update/{path_segment(check_id)}",
            body={"Status": status, "Output": output[-4096:]},
        )

    async def service_maintenance(self, service_id: str, enable: bool, reason: str) -> None:
        await self._call(
            "PUT",
            f"/v1/agent/service/maintenance/{path_segment(service_id)}",
            params={"enable": "true" if enable else "false", "reason": reason},
        )


def ssl_context(cacert: str, client_cert: str, client_key: str, verify: bool) -> ssl.SSLContext:
    """TLS settings as the consul CLI reads them from CONSUL_CACERT & co."""
    context = ssl.create_default_context(cafile=cacert or None)
    if client_cert:
        context.load_cert_chain(client_cert, client_key or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
