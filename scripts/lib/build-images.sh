#!/usr/bin/env bash
# Builds the images the demo and the e2e tests deploy, without any image registry:
#
#   registrator-test/python-base:latest  Debian bookworm minbase + python3 + python3-venv,
#                                        made with debootstrap and `docker import`
#   registrator:dev                      the project's Dockerfile on that base, Python packages
#   (also tagged registrator-test/registrator:latest)   installed offline from wheels that
#                                        `pip wheel` made on this machine
#   registrator-test/consul:1.14.0       the cached static consul binary on a busybox base,
#                                        with an entrypoint that behaves like hashicorp/consul's
#   registrator-test/web:latest          stand-in for nginx:alpine (busybox httpd, EXPOSE 80)
#   registrator-test/http-echo:latest    stand-in for hashicorp/http-echo (`-text=...`,
#                                        `-listen=:PORT`, EXPOSE 5678)
#
# Idempotent: each image is rebuilt only when the digest of its inputs differs from the stamp
# left by its last build (under ${XDG_CACHE_HOME:-$HOME/.cache}/registrator-tests/images/), or
# the image that stamp names is gone. The debootstrap tarball is cached there too, so it is made
# once per machine (about a minute).
#
# Only when asked (`dind` argument, or REGISTRATOR_BUILD_DIND=1), so the demo never pays for it:
#   registrator-test/dind:latest         Debian bookworm minbase + docker.io, iptables, iproute2,
#                                        ca-certificates (debootstrap + `docker import`): an engine
#                                        to run inside a container, for the multi-node swarm tests
#                                        (tests/e2e/test_multinode.py). Its tarball is cached under
#                                        .../registrator-tests/dind/ (about a minute, once; 390 MB).
#
# Usage: build-images.sh [--quiet] [dind]  (needs a Docker daemon that answers; see ensure-docker.sh)
# Environment: DEBIAN_MIRROR (default: the host's first deb.debian.org-style URI, else
# http://deb.debian.org/debian), CONSUL_BIN (default: scripts/lib/build-consul.sh's binary),
# REGISTRATOR_BUILD_DIND=1 (same as the `dind` argument).
set -euo pipefail

build_dind="${REGISTRATOR_BUILD_DIND:-0}"
for arg in "$@"; do
  case "$arg" in
    --quiet) ;;
    dind) build_dind=1 ;;
    *) echo "usage: build-images.sh [--quiet] [dind]" >&2; exit 2 ;;
  esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/registrator-tests"
stamp_dir="$cache_root/images"
mkdir -p "$stamp_dir"

BASE_IMAGE="registrator-test/python-base:latest"
REGISTRATOR_IMAGE="registrator:dev"
REGISTRATOR_TEST_TAG="registrator-test/registrator:latest"
CONSUL_VERSION="${CONSUL_VERSION:-1.14.0}"
CONSUL_IMAGE="registrator-test/consul:$CONSUL_VERSION"
WEB_IMAGE="registrator-test/web:latest"
ECHO_IMAGE="registrator-test/http-echo:latest"
DIND_IMAGE="registrator-test/dind:latest"
SUITE="bookworm"

log() { printf 'build-images: %s\n' "$*" >&2; }

# The demo and a test run may share the daemon: never build the same image twice at once.
exec 9>"$stamp_dir/.lock"
flock 9

stamp_of() { printf '%s/%s.stamp' "$stamp_dir" "$(tr '/:' '__' <<<"$1")"; }

# up_to_date IMAGE DIGEST: the image exists and was built from inputs with this digest.
up_to_date() {
  local image="$1" digest="$2" id
  id="$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
  [[ -n "$id" && -f "$(stamp_of "$image")" && "$(cat "$(stamp_of "$image")")" == "$digest $id" ]]
}

record() {
  local image="$1" digest="$2"
  echo "$digest $(docker image inspect --format '{{.Id}}' "$image")" > "$(stamp_of "$image")"
}

hash_files() { # stdin: nothing; args: files → one digest of names and contents
  local f
  for f in "$@"; do printf '%s\n' "$f"; sha256sum < "$f"; done | sha256sum | cut -d' ' -f1
}

work="$(mktemp -d "${TMPDIR:-/tmp}/build-images.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------------------------------------
# 1. Python base from debootstrap

mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  mirror="$(grep -hvE '^[[:space:]]*#' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
    grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n 1 | tr -d ' ' || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
fi
base_tar="$cache_root/python-base/$SUITE-minbase-python3.tar"
if [[ ! -s "$base_tar" ]]; then
  "$here/ensure-pkg.sh" /usr/sbin/debootstrap debootstrap
  log "debootstrap $SUITE (minbase + python3, python3-venv) from $mirror — about a minute, once"
  mkdir -p "$(dirname "$base_tar")"
  root="$work/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$root" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  # Nothing in the image needs apt's caches, docs or man pages.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
  tar -C "$root" --sort=name --mtime=@0 --numeric-owner -cf "$base_tar.tmp" .
  mv "$base_tar.tmp" "$base_tar"
  rm -rf "$root"
fi
base_changes=('ENV LANG=C.UTF-8' 'CMD ["python3"]')
base_digest="$( { sha256sum < "$base_tar"; printf '%s\n' "${base_changes[@]}"; } | sha256sum | cut -d' ' -f1)"
if up_to_date "$BASE_IMAGE" "$base_digest"; then
  log "$BASE_IMAGE is up to date"
else
  log "importing $BASE_IMAGE"
  args=()
  for change in "${base_changes[@]}"; do args+=(--change "$change"); done
  docker import "${args[@]}" - "$BASE_IMAGE" < "$base_tar" >/dev/null
  record "$BASE_IMAGE" "$base_digest"
fi
base_id="$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")"

# ---------------------------------------------------------------------------------------------
# 2. registrator:dev from the Dockerfile, offline

cd "$repo"
mapfile -t sources < <(find registrator -name '*.py' -o -name py.typed | LC_ALL=C sort)
sources+=(pyproject.toml README.md Dockerfile .dockerignore docker/healthcheck.py docker/entrypoint.py)
reg_digest="$( { hash_files "${sources[@]}"; echo "$base_id"; } | sha256sum | cut -d' ' -f1)"
if up_to_date "$REGISTRATOR_IMAGE" "$reg_digest" && docker image inspect "$REGISTRATOR_TEST_TAG" >/dev/null 2>&1; then
  log "$REGISTRATOR_IMAGE is up to date"
else
  previous_id="$(docker image inspect --format '{{.Id}}' "$REGISTRATOR_IMAGE" 2>/dev/null || true)"
  ctx="$work/context"
  mkdir -p "$ctx"
  # Only what the Dockerfile copies: the context stays small and never holds .cache or .git.
  cp -r --parents "${sources[@]}" "$ctx/"
  python="$repo/.cache/venv/bin/python"
  [[ -x "$python" ]] || python="python3"
  log "pip wheel (the package and its dependencies, for an offline build)"
  "$python" -m pip wheel -q --disable-pip-version-check -w "$ctx/wheels" "$ctx" >&2
  log "docker build $REGISTRATOR_IMAGE (BASE=$BASE_IMAGE)"
  # The legacy builder: this daemon has no buildx; the Dockerfile needs nothing newer.
  DOCKER_BUILDKIT=0 docker build --build-arg "BASE=$BASE_IMAGE" \
    --build-arg "VERSION=$(grep -m1 '^version' pyproject.toml | cut -d'"' -f2)" \
    --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    -t "$REGISTRATOR_IMAGE" "$ctx" > "$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; exit 1; }
  # The legacy builder leaves the build stage behind as an untagged image; it is not needed.
  docker image prune -f --filter label=registrator.stage=build >/dev/null
  docker tag "$REGISTRATOR_IMAGE" "$REGISTRATOR_TEST_TAG"
  record "$REGISTRATOR_IMAGE" "$reg_digest"
  # The build it replaces, unless a container still uses it (best effort).
  if [[ -n "$previous_id" && "$previous_id" != "$(docker image inspect --format '{{.Id}}' "$REGISTRATOR_IMAGE")" ]]; then
    docker image rm "$previous_id" >/dev/null 2>&1 || true
  fi
fi
# A tag naming the build (registrator-test/registrator:<image id>): deploying it makes
# `docker stack deploy` roll the service when the code changed, where the fixed tag
# registrator:dev would leave the old tasks running. Older such tags are dropped (best effort:
# an image still used by a container keeps its tag).
reg_id="$(docker image inspect --format '{{.Id}}' "$REGISTRATOR_IMAGE" | cut -d: -f2 | cut -c1-12)"
docker tag "$REGISTRATOR_IMAGE" "registrator-test/registrator:$reg_id"
docker image ls --format '{{.Repository}}:{{.Tag}}' registrator-test/registrator |
  grep -v -e ":latest$" -e ":$reg_id$" | xargs -r docker image rm >/dev/null 2>&1 || true
echo "registrator-test/registrator:$reg_id" > "$stamp_dir/registrator-build-tag"

# ---------------------------------------------------------------------------------------------
# 3. busybox-based images: consul, and stand-ins for nginx:alpine and hashicorp/http-echo

"$here/ensure-pkg.sh" /bin/busybox busybox-static

# busybox_root DIR: a minimal root with busybox and a few applets.
busybox_root() {
  local root="$1" applet
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/www"
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in sh httpd nc sleep cat echo ip awk cut head grep hostname ls mkdir env kill ps \
                printf test sed true; do
    ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nconsul:x:100:1000::/consul:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n' \
    > "$root/etc/passwd"
  printf 'root:x:0:\nconsul:x:1000:\nnogroup:x:65534:\n' > "$root/etc/group"
}

# import_root IMAGE ROOT CHANGE...: import ROOT as IMAGE unless its stamp matches.
import_root() {
  local image="$1" root="$2" digest change
  shift 2
  tar -C "$root" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$root.tar" .
  digest="$( { sha256sum < "$root.tar"; printf '%s\n' "$@"; } | sha256sum | cut -d' ' -f1)"
  if up_to_date "$image" "$digest"; then
    log "$image is up to date"
    return
  fi
  log "importing $image"
  local args=()
  for change in "$@"; do args+=(--change "$change"); done
  docker import "${args[@]}" - "$image" < "$root.tar" >/dev/null
  record "$image" "$digest"
}

consul_bin="${CONSUL_BIN:-}"
[[ -n "$consul_bin" ]] || consul_bin="$("$here/build-consul.sh")"
root="$work/consul"
busybox_root "$root"
cp "$consul_bin" "$root/bin/consul"
mkdir -p "$root/consul/data" "$root/consul/config"
chmod 0777 "$root/consul/data" "$root/consul/config"
# Like hashicorp/consul's docker-entrypoint.sh: `agent ...` gets -data-dir and -config-dir, and
# CONSUL_BIND_INTERFACE / CONSUL_CLIENT_INTERFACE turn into -bind / -client.
cat > "$root/bin/docker-entrypoint.sh" <<'SH'
#!/bin/sh
set -e
addr_of() { ip -o -4 addr list "$1" | head -n 1 | awk '{print $4}' | cut -d/ -f1; }
if [ -n "$CONSUL_BIND_INTERFACE" ]; then
  CONSUL_BIND="-bind=$(addr_of "$CONSUL_BIND_INTERFACE")"
fi
if [ -n "$CONSUL_CLIENT_INTERFACE" ]; then
  CONSUL_CLIENT="-client=$(addr_of "$CONSUL_CLIENT_INTERFACE")"
fi
if [ "${1#-}" != "$1" ]; then
  set -- agent "$@"
fi
if [ "$1" = agent ]; then
  shift
  set -- consul agent -data-dir=/consul/data -config-dir=/consul/config \
    ${CONSUL_BIND:+"$CONSUL_BIND"} ${CONSUL_CLIENT:+"$CONSUL_CLIENT"} "$@"
elif [ "$1" != consul ] && consul --help "$1" >/dev/null 2>&1; then
  set -- consul "$@"
fi
exec "$@"
SH
chmod 0755 "$root/bin/docker-entrypoint.sh"
import_root "$CONSUL_IMAGE" "$root" \
  'ENTRYPOINT ["/bin/docker-entrypoint.sh"]' 'CMD ["agent", "-dev", "-client", "0.0.0.0"]' \
  'EXPOSE 8300 8301 8301/udp 8302 8302/udp 8500 8600 8600/udp' 'VOLUME /consul/data' \
  'ENV PATH=/bin'

root="$work/web"
busybox_root "$root"
printf '<html><body>web-service (registrator demo stand-in for nginx:alpine)</body></html>\n' \
  > "$root/www/index.html"
import_root "$WEB_IMAGE" "$root" \
  'CMD ["httpd", "-f", "-p", "80", "-h", "/www"]' 'EXPOSE 80' 'ENV PATH=/bin'

root="$work/echo"
busybox_root "$root"
# The few flags of hashicorp/http-echo that stack files use: -text=TEXT, -listen=:PORT.
cat > "$root/bin/http-echo" <<'SH'
#!/bin/sh
text="hello-world"
listen=":5678"
for arg in "$@"; do
  case "$arg" in
    -text=*) text="${arg#-text=}" ;;
    -listen=*) listen="${arg#-listen=}" ;;
  esac
done
text="${text#\"}"; text="${text%\"}"
mkdir -p /tmp/www
printf '%s\n' "$text" > /tmp/www/index.html
exec httpd -f -p "${listen##*:}" -h /tmp/www
SH
chmod 0755 "$root/bin/http-echo"
import_root "$ECHO_IMAGE" "$root" \
  'ENTRYPOINT ["/bin/http-echo"]' 'EXPOSE 5678' 'ENV PATH=/bin'

# ---------------------------------------------------------------------------------------------
# 4. (only when asked) an engine in a container: Docker-in-Docker nodes for multi-node swarms.
# `--privileged` does not work on every machine; tests/e2e/test_multinode.py shows the flags
# that run it without.

built=("$BASE_IMAGE" "$REGISTRATOR_IMAGE" "$CONSUL_IMAGE" "$WEB_IMAGE" "$ECHO_IMAGE")
if [[ "$build_dind" == 1 ]]; then
  dind_tar="$cache_root/dind/$SUITE-minbase-dind.tar"
  if [[ ! -s "$dind_tar" ]]; then
    "$here/ensure-pkg.sh" /usr/sbin/debootstrap debootstrap
    log "debootstrap $SUITE (minbase + docker.io, iptables, iproute2) from $mirror — about a minute, once"
    mkdir -p "$(dirname "$dind_tar")"
    root="$work/dind-rootfs"
    debootstrap --variant=minbase --include=docker.io,iptables,iproute2,ca-certificates \
      "$SUITE" "$root" "$mirror" > "$work/debootstrap-dind.log" 2>&1 ||
      { tail -n 30 "$work/debootstrap-dind.log" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
    tar -C "$root" --sort=name --mtime=@0 --numeric-owner -cf "$dind_tar.tmp" .
    mv "$dind_tar.tmp" "$dind_tar"
    rm -rf "$root"
  fi
  dind_changes=('ENV LANG=C.UTF-8' 'CMD ["dockerd", "--storage-driver", "vfs"]')
  dind_digest="$( { sha256sum < "$dind_tar"; printf '%s\n' "${dind_changes[@]}"; } | sha256sum | cut -d' ' -f1)"
  if up_to_date "$DIND_IMAGE" "$dind_digest"; then
    log "$DIND_IMAGE is up to date"
  else
    log "importing $DIND_IMAGE"
    args=()
    for change in "${dind_changes[@]}"; do args+=(--change "$change"); done
    docker import "${args[@]}" - "$DIND_IMAGE" < "$dind_tar" >/dev/null
    record "$DIND_IMAGE" "$dind_digest"
  fi
  built+=("$DIND_IMAGE")
fi

for image in "${built[@]}"; do
  log "$(docker image inspect --format "$image {{.Id}} {{.Size}}" "$image" |
    awk '{printf "%s %.19s %.1f MB", $1, $2, $3/1e6}')"
done
