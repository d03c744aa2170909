"""Entrypoint of the registrator image: never run the agent as root.

Started as a non-root user (`user: "10001:<gid>"`, `--group-add`), it execs registrator as is.
Started as root — what a gliderlabs stack file does, since it sets no user — it looks up the
group that owns the mounted Docker socket, drops to the unprivileged `registrator` user with
that group, and then execs registrator. So the seed's stack files work unchanged, and the
agent still holds no root privileges.
"""

import os
import sys

AGENT_UID = AGENT_GID = 10001
SOCKET_CANDIDATES = ("/var/run/docker.sock", "/tmp/docker.sock")


def socket_path() -> str | None:
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://") :]
    if host:
        return None  # tcp:// needs no socket group
    return next((path for path in SOCKET_CANDIDATES if os.path.exists(path)), None)


def main() -> None:
    argv = ["registrator", *sys.argv[1:]]
    if os.getuid() == 0:
        groups = []
        path = socket_path()
        if path and os.path.exists(path):
            groups.append(os.stat(path).st_gid)
        os.setgroups(groups)
        os.setgid(AGENT_GID)
        os.setuid(AGENT_UID)
    os.execvp("registrator", argv)


if __name__ == "__main__":
    main()
