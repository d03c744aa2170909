"""HEALTHCHECK for the registrator image: exit 0 when healthy, 1 when not.

With the health server enabled (REGISTRATOR_HTTP_ADDR=HOST:PORT or :PORT in the environment),
it asks GET /health, which answers 200 only once registrator reaches Docker and Consul and has
finished its first full reconcile. Without it, this is liveness only: the agent (PID 1) exists
and is not a zombie. Flags such as `-http-addr` on the command line are not visible here; use
the environment variable when you want the real check.
"""

import os
import sys
import urllib.request


def main() -> int:
    addr = os.environ.get("REGISTRATOR_HTTP_ADDR", "").strip()
    if addr:
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=4) as answer:
                return 0 if answer.status == 200 else 1
        except OSError as err:  # HTTPError (503 while not ready) is an OSError too
            print(f"/health: {err}", file=sys.stderr)
            return 1
    try:
        with open("/proc/1/stat", encoding="ascii") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except OSError as err:
        print(f"/proc/1/stat: {err}", file=sys.stderr)
        return 1
    return 0 if state != "Z" else 1


if __name__ == "__main__":
    sys.exit(main())
