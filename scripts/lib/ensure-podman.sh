#!/usr/bin/env bash
# Makes sure Podman's Docker-compatible API answers on its own socket (never Docker's), for the
# podman test lane. Installs Debian's podman (4.3.1) when missing, lowers the default container
# ulimits this sandbox refuses, starts `podman system service` in the background, creates the
# lane's default test network on a 198.18.0.0/15 subnet (Podman's own default is 10.88.0.0/16)
# and loads the test image from the Docker engine that built it.
#
# Usage: ensure-podman.sh STATE_DIR SOCKET NETWORK SUBNET
#   prints nothing on stdout; progress on stderr. Idempotent: a service that answers is reused.
set -euo pipefail

state_dir="${1:?usage: ensure-podman.sh STATE_DIR SOCKET NETWORK SUBNET}"
socket="${2:?socket path}"
network="${3:?network name}"
subnet="${4:?subnet}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$state_dir" "$(dirname "$socket")"

"$here/ensure-pkg.sh" /usr/bin/podman podman

# "error setting rlimit type 7/6: operation not permitted": the sandbox caps nofile/nproc
# below Podman's defaults, so containers get the lower limits by default.
conf=/etc/containers/containers.conf
if ! grep -qs '^default_ulimits' "$conf"; then
  echo "ensure-podman: setting default_ulimits in $conf" >&2
  mkdir -p /etc/containers
  if grep -qs '^\[containers\]' "$conf"; then
    sed -i '/^\[containers\]/a default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]' "$conf"
  else
    printf '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n' >> "$conf"
  fi
fi

answers() {
  timeout 10 curl -fsS --unix-socket "$socket" http://podman/_ping >/dev/null 2>&1
}
if ! answers; then
  echo "ensure-podman: starting podman system service on $socket (log: $state_dir/podman.log)" >&2
  [[ -S "$socket" ]] && rm -f "$socket"
  nohup podman system service --time=0 "unix://$socket" \
    >"$state_dir/podman.log" 2>&1 </dev/null &
  echo $! > "$state_dir/podman.pid"
  for _ in $(seq 1 30); do answers && break; sleep 1; done
  answers || { tail -n 20 "$state_dir/podman.log" >&2; exit 1; }
fi

if ! podman network exists "$network"; then
  echo "ensure-podman: creating network $network ($subnet)" >&2
  podman network create --subnet "$subnet" "$network" >/dev/null
fi
