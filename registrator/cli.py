"""Entry point: argv + environment → Settings, logging, run the agent, exit codes.

Exit codes: 0 after a clean shutdown, 1 when Docker or Consul never answered at startup,
2 for a configuration error (one line on stderr naming the option).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from registrator import __version__
from registrator.addresses import explained_address
from registrator.agent import Agent, StartupError, plan_context
from registrator.arguments import parse_args, usage
from registrator.consul import ConsulClient, ConsulError, ssl_context
from registrator.containers import parse_container
from registrator.docker import DockerClient, DockerError
from registrator.hostnet import host_address
from registrator.http import serve
from registrator.payload import registration
from registrator.plan import Holdings, foreign_holders, without_foreign_ids
from registrator.planner import desired_services, keeps_registrations
from registrator.settings import ConfigError, LogFormat, Settings

log = logging.getLogger("registrator")

EXIT_OK = 0
EXIT_STARTUP = 1
EXIT_CONFIG = 2

# gliderlabs' documented mount point; its stack files (and the seed's) use it.
GLIDERLABS_SOCKET = "/tmp/docker.sock"
DEFAULT_SOCKET = "/var/run/docker.sock"


# Fields some log calls attach (`extra=`), emitted as JSON keys so a log pipeline can filter
# on them without parsing the message.
JSON_LOG_FIELDS = ("container", "service_id", "reason")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in JSON_LOG_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # aiohttp logs every unclosed connection at ERROR during shutdown races; ours are closed.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


def docker_host(settings: Settings, environ: Mapping[str, str]) -> str:
    """The Docker endpoint the agent will use: -docker-host, else DOCKER_HOST, else the
    default socket, else gliderlabs' /tmp/docker.sock when only that one exists.

    The image's entrypoint asks this too, so it gives the agent the group of this socket.
    """
    if (
        "DOCKER_HOST" not in environ
        and settings.docker_host == Settings().docker_host
        and not Path(DEFAULT_SOCKET).exists()
        and Path(GLIDERLABS_SOCKET).exists()
    ):
        return f"unix://{GLIDERLABS_SOCKET}"
    return settings.docker_host


def resolve_environment(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """Fill what depends on the filesystem: token file, gliderlabs' socket path."""
    settings = replace(settings, docker_host=docker_host(settings, environ))
    if settings.consul_token_file and settings.consul_token:
        # CONSUL_HTTP_TOKEN wins, as with the consul CLI; the file is then not watched.
        settings = replace(settings, consul_token_file="")
    if settings.consul_token_file:
        try:
            token = Path(settings.consul_token_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(f"CONSUL_HTTP_TOKEN_FILE: cannot read: {err.strerror}") from None
        if not token:
            raise ConfigError("CONSUL_HTTP_TOKEN_FILE: file is empty")
        settings = replace(settings, consul_token=token)
    for name, path in (
        ("CONSUL_CACERT", settings.consul_cacert),
        ("CONSUL_CLIENT_CERT", settings.consul_client_cert),
        ("CONSUL_CLIENT_KEY", settings.consul_client_key),
    ):
        if path and not Path(path).is_file():
            raise ConfigError(f"{name}: no such file: {path}")
    return settings


def _tls(settings: Settings) -> ssl.SSLContext | None:
    if settings.consul.scheme != "https":
        return None
    return ssl_context(
        settings.consul_cacert,
        settings.consul_client_cert,
        settings.consul_client_key,
        settings.consul_ssl_verify,
    )


async def run_agent(settings: Settings) -> int:
    tls = _tls(settings)
    if tls is not None and not settings.consul_ssl_verify:
        log.warning("CONSUL_HTTP_SSL_VERIFY=false: Consul's certificate is NOT verified")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with (
        DockerClient(settings.docker_host) as docker,
        ConsulClient(
            settings.consul,
            token=settings.consul_token,
            # Re-read when it changes: a token rotated in the file is used without a restart.
            token_file=settings.consul_token_file,
            ssl_context=tls,
        ) as consul,
    ):
        agent = Agent(settings, docker, consul)
        # Up before startup so /health answers 503 (not "connection refused") while waiting.
        server = await serve(agent, settings.http_addr) if settings.http_addr else None
        try:
            # SIGTERM must also end a startup that is still waiting for Docker or Consul.
            starting = asyncio.create_task(agent.start())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not starting.done():
                starting.cancel()
                log.info("stopped before startup completed")
                return EXIT_OK
            try:
                starting.result()
            except StartupError as err:
                log.error("giving up: %s", err)
                return EXIT_STARTUP
            await agent.run(stop)
        finally:
            if server is not None:
                await server.cleanup()
    log.info("stopped")
    return EXIT_OK


async def explain(settings: Settings, reference: str) -> int:
    """Print what would be registered for one container, writing nothing anywhere."""
    async with (
        DockerClient(settings.docker_host) as docker,
        ConsulClient(
            settings.consul, token=settings.consul_token, ssl_context=_tls(settings)
        ) as consul,
    ):
        try:
            version = await docker.negotiate()
            info = await docker.info()
            document = await docker.inspect(reference)
        except DockerError as err:
            print(f"registrator explain: Docker: {err}", file=sys.stderr)
            return EXIT_STARTUP
        if document is None:
            print(f"registrator explain: no container {reference!r}", file=sys.stderr)
            return EXIT_STARTUP
        notes: list[str] = []
        try:
            consul_self = await consul.agent_self()
        except ConsulError as err:
            consul_self = {}
            notes.append(f"Consul did not answer ({err}); its agent's address is unknown")
        host = await host_address(docker)
        identity, context = plan_context(settings, info, consul_self, version, host)
        shown = explained_address(identity.address, bool(consul_self), host)
        if shown != identity.default_address:
            # Plan with the marker as the address: every registration is still shown, and
            # where the address would go is plainly not an address.
            context = replace(context, default_address=shown)
        container = parse_container(document)
        result = desired_services(container, context)
        if keeps_registrations(container, settings.deregister):
            notes.append("exited non-zero with -deregister on-success: existing services kept")
        holders: dict[str, str] = {}
        if consul_self:
            try:
                entries = {s.id: await consul.service(s.id) for s in result.services}
                holders = foreign_holders(entries, identity.node)
            except ConsulError as err:
                notes.append(f"Consul did not answer ({err}); who holds each id is unknown")
        # The agent's own rule: an id someone else holds is left to them, and said.
        services, foreign, taken = without_foreign_ids(
            container.id, result.services, Holdings({}, {}, foreign=holders), identity.node
        )
        report = {
            "container": container.name,
            "id": container.id,
            "node": identity.node,
            "default_address": shown,
            "default_address_source": identity.address.source
            if shown == identity.address.address
            else "",
            "registrations": [registration(service) for service in services],
            # Not registered while someone else holds the id in Consul (who, as far as the
            # entry says: another node's registrator, or the entry's Meta).
            "foreign_holders": [
                {
                    "id": service.id,
                    "holder": holders[service.id],
                    "registration": registration(service),
                }
                for service in result.services
                if service.id in foreign
            ],
            "warnings": [str(problem) for problem in result.problems] + list(taken),
            "notes": notes,
        }
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return EXIT_OK


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    explain_ref = ""
    if args[:1] == ["explain"]:
        if len(args) < 2 or args[1].startswith("-"):
            print("registrator: explain needs a container name or id", file=sys.stderr)
            return EXIT_CONFIG
        explain_ref, args = args[1], args[2:]
    try:
        command = parse_args(args, env)
        if command.action == "help":
            print(usage())
            return EXIT_OK
        if command.action == "version":
            print(f"registrator {__version__}")
            return EXIT_OK
        settings = resolve_environment(command.settings, env)
    except ConfigError as err:
        print(f"registrator: {err}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings)
    if explain_ref:
        return asyncio.run(explain(settings, explain_ref))
    try:
        return asyncio.run(run_agent(settings))
    except KeyboardInterrupt:
        return EXIT_OK
