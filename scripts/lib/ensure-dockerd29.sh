#!/usr/bin/env bash
# Makes sure a Docker Engine 29.7.2 answers on its own socket, beside (never instead of) the
# machine's Debian dockerd 20.10: its own socket, data root, exec root (so its own managed
# containerd), pidfile, bridge and address pool, all disjoint from the 20.10 daemon's
# (--bip 198.18.0.1/24, pool 198.19.0.0/16). Binaries come from build-dockerd29.sh (cached).
#
# Usage: ensure-dockerd29.sh SOCKET [DOCKERD_ARGS...]
#   Prints nothing on stdout; progress on stderr. Idempotent: a daemon that answers is reused.
#
# --iptables=false: the two daemons would otherwise rewrite each other's DOCKER chains (a
# daemon flushes them when it starts), breaking the published ports of everyone using 20.10.
# Published ports then go through docker-proxy (the userland proxy), and the host reaches every
# container address directly, which is all the tests need. Container-to-container traffic on an
# Engine 29 network passes the host's FORWARD chain when br_netfilter is loaded, whose policy
# the 20.10 daemon sets to DROP: no test relies on it.
set -euo pipefail

socket="${1:?usage: ensure-dockerd29.sh SOCKET [DOCKERD_ARGS...]}"
shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/registrator-tests"
run_dir="$(dirname "$socket")/docker29"
data_root="$cache_root/docker29/data"
bridge="${DOCKERD29_BRIDGE:-r29br0}"
bridge_cidr="${DOCKERD29_BRIDGE_CIDR:-198.18.32.1/24}"
pool="${DOCKERD29_POOL:-base=198.18.40.0/21,size=24}"
# Swarm attaches containers to a network named docker_gwbridge whose Linux bridge is also named
# docker_gwbridge unless that network exists beforehand with another bridge name; the 20.10
# daemon's swarm owns the interface of that name, so Engine 29 gets its own.
gwbridge="${DOCKERD29_GWBRIDGE:-r29gwbridge}"
gwbridge_subnet="${DOCKERD29_GWBRIDGE_SUBNET:-198.18.33.0/24}"
mkdir -p "$run_dir" "$data_root"

answers() {
  timeout 10 curl -fsS --unix-socket "$socket" http://docker/_ping >/dev/null 2>&1
}
own_gwbridge() {
  DOCKER_HOST="unix://$socket" docker network inspect docker_gwbridge >/dev/null 2>&1 && return 0
  echo "ensure-dockerd29: creating docker_gwbridge on bridge $gwbridge ($gwbridge_subnet)" >&2
  DOCKER_HOST="unix://$socket" docker network create --driver bridge --subnet "$gwbridge_subnet" \
    --opt com.docker.network.bridge.name="$gwbridge" \
    --opt com.docker.network.bridge.enable_icc=false \
    --opt com.docker.network.bridge.enable_ip_masquerade=true \
    docker_gwbridge >/dev/null
}
if answers; then
  own_gwbridge
  exit 0
fi

bin_dir="$("$here/build-dockerd29.sh")"
for cmd in ip curl; do
  command -v "$cmd" >/dev/null || { echo "ensure-dockerd29: $cmd is missing" >&2; exit 1; }
done
# Debian's containerd (the 20.10 daemon's package) is the one Engine 29 runs, as its own child.
command -v containerd >/dev/null || "$here/ensure-pkg.sh" /usr/bin/containerd containerd

if ! ip link show "$bridge" >/dev/null 2>&1; then
  echo "ensure-dockerd29: creating bridge $bridge ($bridge_cidr)" >&2
  ip link add "$bridge" type bridge
  ip addr add "$bridge_cidr" dev "$bridge"
fi
ip link set "$bridge" up

echo "ensure-dockerd29: starting dockerd 29 on $socket (log: $run_dir/dockerd.log)" >&2
[[ -S "$socket" ]] && rm -f "$socket"
PATH="$bin_dir:$PATH" nohup "$bin_dir/dockerd" \
  --host "unix://$socket" \
  --data-root "$data_root" \
  --exec-root "$run_dir/exec" \
  --pidfile "$run_dir/dockerd.pid" \
  --bridge "$bridge" \
  --default-address-pool "$pool" \
  --iptables=false --ip6tables=false \
  --cgroup-parent /registrator-docker29 \
  --add-runtime "runc13=$bin_dir/runc" --default-runtime runc13 \
  --seccomp-profile unconfined \
  "$@" \
  >"$run_dir/dockerd.log" 2>&1 </dev/null &

for _ in $(seq 1 60); do
  if answers; then
    own_gwbridge
    exit 0
  fi
  sleep 1
done
echo "ensure-dockerd29: dockerd 29 did not answer within 60 s; last log lines:" >&2
tail -n 20 "$run_dir/dockerd.log" >&2
exit 1
