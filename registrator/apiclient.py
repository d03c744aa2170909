"""What the Docker and Consul clients share: one aiohttp session per client, one JSON
request/answer exchange, and one error hierarchy.

`APIError` is the one exception a caller of either client handles; `DockerError` and
`ConsulError` (in docker.py and consul.py) say which backend failed. `transient` tells the
caller whether waiting and asking again can change the answer (a connection refused, a
timeout, a 5xx) or not (a 4xx: the same request will be refused the same way).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self, TypedDict, Unpack

import aiohttp
import yarl


class APIError(Exception):
    """A failed Docker or Consul call.

    `status` is the HTTP status when the backend answered (None when it did not: refused,
    reset, timed out, or an answer that is not JSON); `body` is the start of its answer text.
    """

    def __init__(
        self, message: str, status: int | None = None, transient: bool = True, body: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient
        self.body = body


class RequestOptions(TypedDict, total=False):
    """What one request may carry besides its method and path: the query `params`, a JSON
    `body`, and an `object_pairs_hook` for json.loads (to keep only some fields of a large
    answer while decoding it)."""

    params: Mapping[str, str] | None
    body: Any
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None


class JSONClient:
    """Base of DockerClient and ConsulClient: a lazily made session and `_exchange`.

    Subclasses name their error class and say how to connect (`_connector`) and which headers
    every request carries (`_headers`).
    """

    error: ClassVar[type[APIError]] = APIError

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _connector(self) -> aiohttp.BaseConnector:
        raise NotImplementedError

    def _headers(self) -> dict[str, str]:
        return {}

    def _request_headers(self) -> dict[str, str] | None:
        """Headers read again for each request (a credential that can change at run time)."""
        return None

    def _transient_status(self, status: int) -> bool:
        """Whether an HTTP error status is worth asking again later."""
        return status >= 500

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=self._connector(),
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _exchange(
        self, method: str, url: str | yarl.URL, path: str, **options: Unpack[RequestOptions]
    ) -> Any:
        """One request to `url` (`path` names it in messages); the decoded JSON answer.

        None for an empty answer. Raises `self.error` for an HTTP error status (each client
        says which of its errors mean "no such object"), a redirect, an answer that is not
        JSON, a timeout or a broken connection.
        """
        try:
            # No redirects: Consul's router answers a path it cleaned (`a/../b`) with a 301 to
            # another id's path, and following it would act on that other service; neither
            # API redirects a well-formed request.
            async with self._client().request(
                method,
                url,
                params=options.get("params"),
                json=options.get("body"),
                headers=self._request_headers(),
                allow_redirects=False,
            ) as resp:
                # Bytes straight to json.loads (it reads UTF-8 bytes): no decoded copy of the
                # whole answer, which for a list of every container is the largest one.
                raw = await resp.read()
                if resp.status >= 300:
                    text = raw.decode(errors="replace")
                    raise self.error(
                        f"{method} {path}: HTTP {resp.status}: {text.strip()[:300]}",
                        status=resp.status,
                        transient=self._transient_status(resp.status),
                        body=text[:1000],
                    )
                if not raw.strip():
                    return None
                try:
                    return json.loads(raw, object_pairs_hook=options.get("object_pairs_hook"))
                except ValueError:
                    start = raw[:100].decode(errors="replace")
                    raise self.error(f"{method} {path}: answer is not JSON: {start!r}") from None
        except TimeoutError as err:  # first: TimeoutError is an OSError since Python 3.3
            raise self.error(f"{method} {path}: no answer within {self._timeout:g} s") from err
        except (aiohttp.ClientError, OSError) as err:
            raise self.error(f"{method} {path}: {type(err).__name__}: {err}") from err
