#!/usr/bin/env bash
# Makes sure a Docker daemon answers on DOCKER_HOST. A daemon that already answers is left
# alone; otherwise Debian's docker.io is installed (if dockerd is missing) and dockerd is started
# in the background with addresses from 198.18.0.0/15 so nothing the tests create looks like a
# real LAN.
#
# Usage: ensure-docker.sh <state-dir>   (dockerd's log and pid go there)
set -euo pipefail

state_dir="${1:?usage: ensure-docker.sh STATE_DIR}"
mkdir -p "$state_dir"

docker_answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if docker_answers; then
  echo "ensure-docker: daemon already answering ($(docker version --format '{{.Server.Version}}'))" >&2
  exit 0
fi

host="${DOCKER_HOST:-unix:///var/run/docker.sock}"
case "$host" in
  unix://*) ;;
  *) echo "ensure-docker: no daemon answers on $host and it is not a local socket; start it yourself" >&2
     exit 1 ;;
esac
socket="${host#unix://}"

if ! command -v dockerd >/dev/null; then
  if [[ "$(id -u)" != 0 ]]; then
    echo "ensure-docker: dockerd is missing and installing it needs root" >&2
    exit 1
  fi
  echo "ensure-docker: installing Debian's docker.io" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # The client on PATH may be newer than Debian's; keep it, we only need the daemon.
  apt-get install -y -qq --no-install-recommends docker.io iptables iproute2 >&2
fi

echo "ensure-docker: starting dockerd (log: $state_dir/dockerd.log)" >&2
# Remove a stale socket of a daemon that died; dockerd refuses to start over it otherwise.
[[ -S "$socket" ]] && rm -f "$socket"
nohup dockerd \
  --host "unix://$socket" \
  --bip 198.18.0.1/24 \
  --default-address-pool base=198.19.0.0/16,size=24 \
  --pidfile "$state_dir/dockerd.pid" \
  >"$state_dir/dockerd.log" 2>&1 </dev/null &

for _ in $(seq 1 60); do
  if docker_answers; then
    echo "ensure-docker: dockerd $(docker version --format '{{.Server.Version}}') is up" >&2
    exit 0
  fi
  sleep 1
done
echo "ensure-docker: dockerd did not answer within 60 s; last log lines:" >&2
tail -n 20 "$state_dir/dockerd.log" >&2
exit 1
