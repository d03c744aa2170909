#!/usr/bin/env bash
# Builds Docker Engine 29.7.2 (dockerd + docker-proxy) and runc v1.3.3 from the Go module proxy
# and caches them outside the checkout (CI clones afresh; the dockerd build is ~13 min of one core).
#
# Debian ships Engine 20.10 only; users run 28/29. v2.0.0-beta.21 is the module tag of
# docker-v29.7.2 (github.com/moby/moby/v2 has no replace directives, so `go install pkg@v` works).
# Debian's runc 1.1.5 cannot start Engine 29's containers ("namespace time does not exist"), hence
# runc v1.3.3, built without the seccomp tag (dockerd must run with --seccomp-profile unconfined).
#
# Prints the cache folder (holding dockerd, docker-proxy, runc) on stdout; progress on stderr.
set -euo pipefail

MOBY_MODULE_VERSION="${MOBY_MODULE_VERSION:-v2.0.0-beta.21}"
RUNC_VERSION="${RUNC_VERSION:-v1.3.3}"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/registrator-tests"
out="$cache_root/dockerd-29.7.2"

if [[ -x "$out/dockerd" && -x "$out/docker-proxy" && -x "$out/runc" ]] &&
  "$out/runc" --version >/dev/null 2>&1; then
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "build-dockerd29: go is not on PATH" >&2; exit 1; }
mkdir -p "$out"
# One build at a time: a second caller waits for the first instead of compiling twice.
exec 9>"$out/.lock"
flock 9
if [[ -x "$out/dockerd" && -x "$out/docker-proxy" && -x "$out/runc" ]]; then
  echo "$out"
  exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/dockerd29-build.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

if [[ ! -x "$out/runc" ]]; then
  echo "build-dockerd29: building runc $RUNC_VERSION" >&2
  mkdir -p "$work/fetch"
  printf 'module fetch\n\ngo 1.22\n' > "$work/fetch/go.mod"
  src="$(cd "$work/fetch" && go mod download -json "github.com/opencontainers/runc@$RUNC_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  cp -r "$src" "$work/runc"
  chmod -R u+w "$work/runc"
  # The module cache copy lacks the vendored third_party folder this replace points at.
  sed -i '/^replace github.com\/opencontainers\/selinux => /d' "$work/runc/go.mod"
  (cd "$work/runc" && CGO_ENABLED=1 go build -mod=mod -trimpath -o "$out/runc.tmp" . >&2)
  mv "$out/runc.tmp" "$out/runc"
fi

for cmd in docker-proxy dockerd; do
  if [[ ! -x "$out/$cmd" ]]; then
    echo "build-dockerd29: building $cmd (moby $MOBY_MODULE_VERSION; dockerd takes ~13 min)" >&2
    GOBIN="$work/bin" CGO_ENABLED=0 go install -trimpath -ldflags '-s -w' \
      "github.com/moby/moby/v2/cmd/$cmd@$MOBY_MODULE_VERSION" >&2
    mv "$work/bin/$cmd" "$out/$cmd"
  fi
done
"$out/runc" --version >&2
echo "$out"
