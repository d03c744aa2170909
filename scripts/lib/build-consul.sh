#!/usr/bin/env bash
# Builds the consul binary the tests run against, from the Go module proxy, and caches it
# outside the checkout (CI clones afresh every run; a rebuild costs ~5 minutes).
#
# Pinned to v1.14.0: the newest release under the MPL that the module proxy here still serves
# with every module it needs (see README, "Consul version").
#
# Prints the binary's path on stdout; progress goes to stderr.
set -euo pipefail

CONSUL_VERSION="${CONSUL_VERSION:-1.14.0}"
# The api module v1.14.0's tree compiles against (its go.mod names an older one).
CONSUL_API_VERSION="${CONSUL_API_VERSION:-1.18.0}"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/registrator-tests"
out="$cache_root/consul-$CONSUL_VERSION/consul"

if [[ -x "$out" ]] && "$out" version >/dev/null 2>&1; then
  echo "$out"
  exit 0
fi

# Two test runs on one machine (a developer's and a helper's, say) must not build at once: the
# second waits here and then finds the first one's binary.
mkdir -p "$cache_root"
exec 9>"$cache_root/.consul-build.lock"
flock 9
if [[ -x "$out" ]] && "$out" version >/dev/null 2>&1; then
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "build-consul: go is not on PATH" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/consul-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"

echo "build-consul: fetching github.com/hashicorp/consul@v$CONSUL_VERSION" >&2
# go mod download needs a module context to write into.
printf 'module fetch\n\ngo 1.20\n' > go.mod
gomod="$(go mod download -json "github.com/hashicorp/consul@v$CONSUL_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"

python3 - "$gomod" "$CONSUL_VERSION" "$CONSUL_API_VERSION" > go.mod.new <<'PY'
import re
import sys

path, version, api_version = sys.argv[1:]
text = open(path, encoding="utf-8").read()
lines = text.splitlines()
out = ["module consul-build"]
in_replace_block = False
for line in lines:
    stripped = line.strip()
    if stripped.startswith("module "):
        continue
    # Replaces pointing into Consul's own tree (./api, ./sdk, ...) cannot resolve outside it.
    if stripped.startswith("replace (") :
        in_replace_block = True
        out.append(line)
        continue
    if in_replace_block and stripped == ")":
        in_replace_block = False
        out.append(line)
        continue
    if ("=> ./" in stripped or "=> ../" in stripped):
        continue
    line = re.sub(r"(github\.com/hashicorp/consul/api) v\S+", r"\1 v" + api_version, line)
    out.append(line)
out.append("")
out.append(f"require github.com/hashicorp/consul v{version}")
print("\n".join(out))
PY
mv go.mod.new go.mod

echo "build-consul: compiling (several minutes on an empty module cache)" >&2
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$out.tmp" \
  github.com/hashicorp/consul >&2
mv "$out.tmp" "$out"
"$out" version >&2
echo "$out"
