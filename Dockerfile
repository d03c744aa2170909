# registrator: keeps Consul's service catalog in step with Docker containers.
#
#   docker build -t registrator .                      # online: pip installs from PyPI
#
# Offline (no PyPI from inside the build, e.g. behind a proxy whose CA the build cannot see):
# build the wheels on the host first; when wheels/ holds any, ONLY those are used (--no-index):
#
#   pip wheel -w wheels . && docker build -t registrator .
#
# Build arguments:
#   BASE        base image with python3 >= 3.11 and its venv module (default python:3.11-slim;
#               scripts/lib/build-images.sh passes a debootstrap-made Debian base)
#   DOCKER_GID  gid of the Docker socket on the hosts where this image runs; the non-root user
#               is made a member of it. Without it, give the group at run time
#               (`docker run --group-add $(stat -c %g /var/run/docker.sock)`) or, under
#               `docker stack deploy`, `user: "10001:<gid>"` (see deploy/registrator-stack.yml)
#   VERSION, REVISION   recorded in the OCI labels
#
# Runs as uid 10001 (user `registrator`), never root. gliderlabs' command lines work unchanged:
#   docker run -v /var/run/docker.sock:/tmp/docker.sock --group-add <gid> registrator \
#     -internal -cleanup consul://consul-server:8500

ARG BASE=python:3.11-slim

FROM ${BASE} AS build
LABEL registrator.stage=build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY . /src
RUN python3 -m venv /opt/venv \
 && if ls /src/wheels/*.whl >/dev/null 2>&1; then \
      echo "installing offline from wheels/"; \
      /opt/venv/bin/pip install --no-index --find-links /src/wheels registrator; \
    else \
      echo "no wheels/ in the build context: installing from PyPI"; \
      /opt/venv/bin/pip install /src; \
    fi \
 && /opt/venv/bin/pip uninstall -q -y pip setuptools \
 && /opt/venv/bin/registrator --version

FROM ${BASE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG DOCKER_GID=
LABEL org.opencontainers.image.title="registrator" \
      org.opencontainers.image.description="Keeps Consul's service catalog in step with Docker containers; a drop-in replacement for gliderlabs/registrator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/registrator-py/registrator"
COPY --from=build /opt/venv /opt/venv
COPY docker/healthcheck.py docker/entrypoint.py /opt/registrator/
# Plain /etc/passwd lines rather than useradd: the base may be a minimal debootstrap.
RUN echo 'registrator:x:10001:10001:registrator:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'registrator:x:10001:' >> /etc/group \
 && if [ -n "${DOCKER_GID}" ]; then echo "docker-host:x:${DOCKER_GID}:registrator" >> /etc/group; fi
# The health server listens on the container's loopback by default, so the HEALTHCHECK below
# is a readiness check (Docker and Consul reachable, first reconcile done) without exposing
# anything; set REGISTRATOR_HTTP_ADDR=:PORT to let Prometheus scrape /metrics.
# FROZENLIST_NO_EXTENSIONS: aiohttp's FrozenList in pure Python; the compiled one is C++ and
# loads libstdc++, 1.4 MB of the agent's RSS for a list aiohttp builds a few times at startup
# (docs/operations.md, Memory).
ENV PATH=/opt/venv/bin:$PATH \
    FROZENLIST_NO_EXTENSIONS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REGISTRATOR_HTTP_ADDR=127.0.0.1:9876
# No USER line on purpose: started as root (as gliderlabs stack files do, with no `user:`), the
# entrypoint drops to uid 10001 with the group of the Docker socket the agent will use (warning
# if that is group 0), after copying root-only secret files (token, TLS key) where the agent can
# read them; started as `user: "10001:<gid>"` it just runs. Either way the agent never runs as
# root.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "/opt/registrator/healthcheck.py"]
ENTRYPOINT ["python3", "/opt/registrator/entrypoint.py"]
