"""Entrypoint of the registrator image: never run the agent as root.

Started as a non-root user (`user: "10001:<gid>"`, `--group-add`), it execs registrator as is.
Started as root — what a gliderlabs stack file does, since it sets no user — it prepares what
only root can, then drops to the unprivileged `registrator` user (uid 10001) and execs
registrator:

- the agent's supplementary group is the group of the Docker socket the agent will use, as
  the agent's own settings resolve it (`-docker-host`, `DOCKER_HOST`, the default socket, or
  gliderlabs' /tmp/docker.sock). A socket owned by group 0 hands the agent the root group:
  that is said in a warning, never done silently;
- files the agent must read (`CONSUL_HTTP_TOKEN_FILE`, `CONSUL_CLIENT_KEY`, ...) that uid
  10001 cannot read (a root-only secret) are copied, while still root, into a private
  directory the agent owns, and the agent is pointed at the copies. Where no copy can be
  made, it stops with a message naming the option, the file, its owner and mode.

Every decision is printed in one line on stderr, so `docker logs` shows what happened.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

AGENT_UID = AGENT_GID = 10001
# The options naming files the agent reads, with the flag that points it elsewhere.
SECRET_OPTIONS = (
    ("consul_token_file", "CONSUL_HTTP_TOKEN_FILE", "-consul-token-file"),
    ("consul_client_key", "CONSUL_CLIENT_KEY", "-consul-client-key"),
    ("consul_client_cert", "CONSUL_CLIENT_CERT", "-consul-client-cert"),
    ("consul_cacert", "CONSUL_CACERT", "-consul-cacert"),
)
# Where a private copy can go; the first writable one is used (the root filesystem may be
# read-only, so tmpfs mounts come first).
COPY_DIRS = ("/run", "/dev/shm", "/tmp")


def say(message: str) -> None:
    print(f"registrator entrypoint: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    """What the agent's own parser makes of argv and the environment."""

    socket: str  # "" when Docker is reached over TCP
    files: tuple[tuple[str, str, str], ...]  # (environment name, flag, path) of files to read


def agent_args(argv: Sequence[str]) -> list[str]:
    """The agent's options: `explain CONTAINER ...` takes its options after the container."""
    return list(argv[2:]) if argv[:1] == ["explain"] else list(argv)


def read_options(argv: Sequence[str], environ: dict[str, str]) -> Options | None:
    """None when the options do not parse: the agent then says why itself (exit 2)."""
    from registrator.arguments import parse_args
    from registrator.cli import docker_host
    from registrator.settings import ConfigError

    try:
        command = parse_args(agent_args(argv), environ)
    except ConfigError:
        return None
    settings = command.settings
    host = docker_host(settings, environ)
    socket = host[len("unix://") :] if host.startswith("unix://") else ""
    files = tuple(
        (env, flag, str(getattr(settings, field)))
        for field, env, flag in SECRET_OPTIONS
        if getattr(settings, field)
    )
    return Options(socket, files)


def with_flags(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    """argv with `flags` added where they override the user's (the last value of an option
    wins), but before a `--` that ends the options."""
    args = list(argv)
    end = args.index("--") if "--" in args else len(args)
    return [*args[:end], *flags, *args[end:]]


def socket_group(path: str) -> int | None:
    try:
        return os.stat(path).st_gid
    except OSError:
        return None  # missing: the agent reports that it cannot reach Docker


def unreadable(paths: Sequence[str], groups: Sequence[int]) -> set[str]:
    """Which of `paths` the agent (uid 10001 with `groups`) could not open for reading.

    Tried for real in a child that drops to that identity, so directory permissions, ACLs
    and anything else the kernel checks are all taken into account.
    """
    if not paths:
        return set()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's work is seen through the pipe
        os.close(read_end)
        drop_privileges(groups)
        failed = []
        for path in paths:
            try:
                with open(path, "rb"):
                    pass
            except OSError:
                failed.append(path)
        os.write(write_end, "\0".join(failed).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(child, 0)
    return set(answer.split("\0")) - {""}


def private_copies(
    files: Sequence[tuple[str, str, str]], parents: Sequence[str] = COPY_DIRS
) -> list[str]:
    """Copies each (env, flag, path) into a new directory only uid 10001 can read; returns the
    flags that point the agent at the copies. Raises OSError if no directory can take them."""
    errors = []
    for parent in parents:
        try:
            directory = tempfile.mkdtemp(prefix="registrator-secrets-", dir=parent)
        except OSError as err:
            errors.append(f"{parent}: {err.strerror}")
            continue
        os.chown(directory, AGENT_UID, AGENT_GID)
        flags = []
        for index, (env, flag, path) in enumerate(files):
            copy = os.path.join(directory, f"{index}-{os.path.basename(path)}")
            shutil.copyfile(path, copy)
            os.chown(copy, AGENT_UID, AGENT_GID)
            os.chmod(copy, 0o400)
            say(
                f"{env} {path} cannot be read by uid {AGENT_UID}: using a copy only the "
                f"agent can read, {copy} (a change to {path} needs a restart)"
            )
            flags += [flag, copy]
        return flags
    raise OSError("; ".join(errors))


def describe(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError as err:
        return f"cannot stat: {err.strerror}"
    return f"owner {info.st_uid}:{info.st_gid}, mode {info.st_mode & 0o7777:04o}"


def drop_privileges(groups: Sequence[int]) -> None:
    os.setgroups(list(groups))
    os.setgid(AGENT_GID)
    os.setuid(AGENT_UID)


def prepare(argv: list[str], environ: dict[str, str]) -> list[str]:
    """As root: choose the groups, make the files readable, drop privileges; returns argv."""
    options = read_options(argv, environ)
    groups: list[int] = []
    if options is not None and options.socket:
        gid = socket_group(options.socket)
        if gid == 0:
            say(
                f"WARNING: the Docker socket {options.socket} belongs to group 0 (root): the "
                "agent runs with the root group to reach it. Give the socket a group of its "
                'own on the host, or set the identity yourself (`user: "10001:0"`) to make '
                "that choice explicit"
            )
        if gid is not None:
            groups.append(gid)
    if options is not None:
        missing = unreadable([path for _, _, path in options.files], groups)
        blocked = [item for item in options.files if item[2] in missing and os.path.isfile(item[2])]
        if blocked:
            try:
                argv = with_flags(argv, private_copies(blocked))
            except OSError as err:
                for env, _, path in blocked:
                    say(
                        f"{env} {path} cannot be read by uid {AGENT_UID} ({describe(path)}) "
                        f"and no private copy could be made ({err}): make it readable to "
                        f"uid {AGENT_UID} or one of its groups {groups or [AGENT_GID]}, or "
                        "run the container as a user that can read it"
                    )
                sys.exit(2)
    drop_privileges(groups)
    say(f"running as uid {AGENT_UID}, gid {AGENT_GID}, groups {groups} (not root)")
    return argv


def main() -> None:
    argv = sys.argv[1:]
    if os.getuid() == 0:
        argv = prepare(argv, dict(os.environ))
    os.execvp("registrator", ["registrator", *argv])


if __name__ == "__main__":
    main()
