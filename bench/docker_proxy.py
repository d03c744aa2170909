"""A recording proxy for the Docker Engine API on a unix socket.

Point a client's DOCKER_HOST at `unix://<listen path>` and every request it makes is forwarded
to the real daemon socket, recorded (method, normalised endpoint, status, duration, bytes) and,
optionally, judged by a policy that may refuse it with a 403 the way an authorization plugin
would. Streaming answers (`/events`, `logs?follow`, exec output) are passed through chunk by
chunk, so a client following events sees them as soon as the daemon sends them.

The benchmarks use it to count the Docker calls the agent makes per full reconcile without
touching the agent's code; security tests can use the policy hook to check which calls the
agent needs (and that it survives refusals).

    async with DockerProxy(tmp / "docker.sock") as proxy:      # in an asyncio program
        ... DOCKER_HOST=proxy.docker_host ...
        mark = proxy.mark()
        ...
        print(proxy.counts(since=mark))  # Counter({"GET /containers/json": 1, ...})

    with ThreadedDockerProxy(tmp / "docker.sock") as proxy:    # from synchronous code
        ...

    python -m bench.docker_proxy /tmp/docker.sock              # stand-alone; Ctrl-C prints a tally

With `label_scope="key=value"` the proxy also narrows what the client sees to containers with
that label, by adding it to the filters of `GET /containers/json` and `GET /events` (the daemon
does the filtering): on a daemon shared with other users this gives an agent the view it would
have on a host of its own. Inspect by id still answers for any container.

Not supported: connection upgrades (`Upgrade: tcp`, used by `docker exec -it` and attach);
those are answered 501. Plain hijacked answers without an upgrade request (what the agent's
exec does) are streamed like any other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

DEFAULT_UPSTREAM = "/var/run/docker.sock"

# A policy sees (method, endpoint) and returns None to forward the request, or a reason to
# refuse it with HTTP 403 (Docker's own error shape: {"message": reason}).
Policy = Callable[[str, str], str | None]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_VERSION_PREFIX = re.compile(r"^/v\d+\.\d+(?=/)")
# Path segments that name one object: /containers/<id|name>/..., /exec/<id>/..., etc.
_OBJECT_COLLECTIONS = frozenset(
    {"containers", "exec", "images", "networks", "volumes", "services", "tasks", "nodes"}
)
_COLLECTION_VERBS = frozenset({"json", "create", "prune", "search", "load", "get"})
_SCOPED = frozenset({"GET /containers/json", "GET /events"})


def scoped_query(query: Mapping[str, str], label: str) -> list[tuple[str, str]]:
    """The query with `label` added to its `filters` (both of Docker's filter shapes)."""
    pairs = [(k, v) for k, v in query.items() if k != "filters"]
    try:
        filters = json.loads(query.get("filters") or "{}")
    except ValueError:
        filters = {}
    if not isinstance(filters, dict):
        filters = {}
    labels = filters.get("label")
    if isinstance(labels, dict):  # the old shape: {"label": {"k=v": true}}
        labels[label] = True
    else:
        filters["label"] = [*(labels if isinstance(labels, list) else []), label]
    pairs.append(("filters", json.dumps(filters)))
    return pairs


def endpoint_of(method: str, path: str) -> str:
    """`GET /v1.41/containers/3f2a…/json` → `GET /containers/{id}/json`: one key per API call
    kind, whatever the API version or the object."""
    path = _VERSION_PREFIX.sub("", path.split("?", 1)[0]) or "/"
    parts = path.split("/")
    for index in range(1, len(parts) - 1):
        if parts[index] in _OBJECT_COLLECTIONS and parts[index + 1] not in _COLLECTION_VERBS:
            parts[index + 1] = "{id}"
    return f"{method.upper()} {'/'.join(parts)}"


@dataclass
class ProxiedRequest:
    """One request seen by the proxy. `status` and `seconds` are filled when it ends
    (a followed event stream stays unfinished until the client closes it)."""

    method: str
    path: str
    query: str
    endpoint: str
    started: float  # time.monotonic() when the request arrived
    status: int = 0
    seconds: float = 0.0
    response_bytes: int = 0
    refused: str | None = None
    finished: bool = False


@dataclass
class _Log:
    lock: threading.Lock = field(default_factory=threading.Lock)
    items: list[ProxiedRequest] = field(default_factory=list)


class DockerProxy:
    """The proxy as an asyncio server; use from a running event loop."""

    def __init__(
        self,
        listen: str | Path,
        upstream: str | Path = DEFAULT_UPSTREAM,
        *,
        policy: Policy | None = None,
        label_scope: str | None = None,
    ) -> None:
        self.listen = Path(listen)
        self.upstream = Path(upstream)
        self.policy = policy
        self.label_scope = label_scope
        self._log = _Log()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- what was seen --------------------------------------------------------------------

    @property
    def docker_host(self) -> str:
        """The value for a client's DOCKER_HOST."""
        return f"unix://{self.listen}"

    @property
    def requests(self) -> list[ProxiedRequest]:
        """A copy of every request recorded so far, in arrival order."""
        with self._log.lock:
            return list(self._log.items)

    def mark(self) -> int:
        """A position in the record, for `counts(since=...)` / `requests_since(...)`."""
        with self._log.lock:
            return len(self._log.items)

    def requests_since(self, mark: int) -> list[ProxiedRequest]:
        with self._log.lock:
            return list(self._log.items[mark:])

    def counts(self, since: int = 0) -> Counter[str]:
        """Requests per endpoint (`GET /containers/{id}/json`, …) since `mark`."""
        return Counter(item.endpoint for item in self.requests_since(since))

    def reset(self) -> None:
        with self._log.lock:
            self._log.items.clear()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            return
        self.listen.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.listen.unlink()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.upstream), limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that hangs up on a followed stream (/events) ends the
        # upstream request too, instead of leaving it open until the next event.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.listen)).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        with contextlib.suppress(FileNotFoundError):
            self.listen.unlink()

    async def __aenter__(self) -> DockerProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- forwarding -----------------------------------------------------------------------

    def _record(self, request: web.Request) -> ProxiedRequest:
        item = ProxiedRequest(
            method=request.method,
            path=request.path,
            query=request.query_string,
            endpoint=endpoint_of(request.method, request.path),
            started=time.monotonic(),
        )
        with self._log.lock:
            self._log.items.append(item)
        return item

    @staticmethod
    def _finish(item: ProxiedRequest, status: int) -> None:
        item.status = status
        item.seconds = time.monotonic() - item.started
        item.finished = True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        item = self._record(request)
        if "upgrade" in request.headers.get("Connection", "").lower():
            self._finish(item, 501)
            return web.json_response(
                {"message": "bench docker proxy: connection upgrades are not supported"},
                status=501,
            )
        if self.policy is not None:
            reason = self.policy(request.method, item.endpoint)
            if reason is not None:
                item.refused = reason
                self._finish(item, 403)
                return web.json_response({"message": reason}, status=403)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read() if request.can_read_body else None
        target = request.path_qs
        if self.label_scope and item.endpoint in _SCOPED:
            target = (
                request.path
                + "?"
                + urlencode(scoped_query(request.query, self.label_scope), doseq=True)
            )
        try:
            async with self._session.request(
                request.method,
                f"http://docker{target}",
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as upstream:
                out_headers = {
                    k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
                }
                if upstream.content_length is not None:
                    payload = await upstream.read()
                    item.response_bytes = len(payload)
                    self._finish(item, upstream.status)
                    return web.Response(status=upstream.status, body=payload, headers=out_headers)
                # A stream (chunked, or read until the daemon closes): pass it through as it
                # comes, so followed events arrive without delay.
                response = web.StreamResponse(status=upstream.status, headers=out_headers)
                response.enable_chunked_encoding()
                await response.prepare(request)
                try:
                    async for chunk in upstream.content.iter_any():
                        item.response_bytes += len(chunk)
                        await response.write(chunk)
                    await response.write_eof()
                except (ConnectionResetError, aiohttp.ClientError):
                    pass  # the client or the daemon went away mid-stream
                self._finish(item, upstream.status)
                return response
        except (aiohttp.ClientError, OSError) as err:
            self._finish(item, 502)
            return web.json_response({"message": f"bench docker proxy: {err}"}, status=502)


class ThreadedDockerProxy:
    """The same proxy on its own event loop in a daemon thread, for synchronous callers (or
    to keep the proxy's work off the event loop of an in-process agent being measured)."""

    def __init__(
        self,
        listen: str | Path,
        upstream: str | Path = DEFAULT_UPSTREAM,
        *,
        policy: Policy | None = None,
        label_scope: str | None = None,
    ) -> None:
        self.proxy = DockerProxy(listen, upstream, policy=policy, label_scope=label_scope)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def docker_host(self) -> str:
        return self.proxy.docker_host

    def mark(self) -> int:
        return self.proxy.mark()

    def counts(self, since: int = 0) -> Counter[str]:
        return self.proxy.counts(since)

    def requests_since(self, mark: int) -> list[ProxiedRequest]:
        return self.proxy.requests_since(mark)

    @property
    def requests(self) -> list[ProxiedRequest]:
        return self.proxy.requests

    def start(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.proxy.start())
            except BaseException as err:  # reported to the starting thread
                failure.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.proxy.close())
            loop.close()

        self._thread = threading.Thread(target=main, name="docker-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("docker proxy did not start")
        if failure:
            self._thread = None
            raise failure[0]

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> ThreadedDockerProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def recording_docker_host(
    listen: str | Path, upstream: str | Path = DEFAULT_UPSTREAM, policy: Policy | None = None
) -> Iterator[ThreadedDockerProxy]:
    """`with recording_docker_host(path) as proxy: ... proxy.docker_host ...`"""
    proxy = ThreadedDockerProxy(listen, upstream, policy=policy)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("listen", help="unix socket path to listen on")
    parser.add_argument("--upstream", default=DEFAULT_UPSTREAM, help="the daemon's socket")
    parser.add_argument(
        "--label-scope", default=None, help="KEY=VALUE: list and follow only such containers"
    )
    args = parser.parse_args(argv)
    proxy = ThreadedDockerProxy(args.listen, args.upstream, label_scope=args.label_scope)
    proxy.start()
    print(f"forwarding {proxy.docker_host} -> unix://{args.upstream}; Ctrl-C prints a tally")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    for endpoint, count in sorted(proxy.counts().items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{count:8d}  {endpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
