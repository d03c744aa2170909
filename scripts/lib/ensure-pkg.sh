#!/usr/bin/env bash
# Makes sure FILE exists, installing Debian PACKAGE... to provide it when it does not.
# `apt-get update` runs only when the install fails without it: the package lists on a kept
# machine are usually fresh enough, and refreshing them costs time on every first run.
#
# Usage: ensure-pkg.sh FILE PACKAGE...
set -euo pipefail

file="${1:?usage: ensure-pkg.sh FILE PACKAGE...}"
shift
(( $# > 0 )) || { echo "usage: ensure-pkg.sh FILE PACKAGE..." >&2; exit 2; }

[[ -e "$file" ]] && exit 0

if [[ "$(id -u)" != 0 ]]; then
  echo "ensure-pkg: $file is missing and installing $* needs root" >&2
  exit 1
fi
command -v apt-get >/dev/null || { echo "ensure-pkg: $file is missing and there is no apt-get" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
# apt's chatter goes to a log that is shown only when something fails.
log="$(mktemp "${TMPDIR:-/tmp}/ensure-pkg.XXXXXX")"
trap 'rm -f "$log"' EXIT
quietly() { "$@" </dev/null >"$log" 2>&1 || { tail -n 20 "$log" >&2; return 1; }; }
install() { quietly apt-get install -y -q --no-install-recommends "$@"; }

echo "ensure-pkg: installing $* (for $file)" >&2
if ! install "$@"; then
  echo "ensure-pkg: install failed; refreshing package lists and retrying" >&2
  quietly apt-get update -q
  install "$@"
fi
[[ -e "$file" ]] || { echo "ensure-pkg: $* installed but $file is still missing" >&2; exit 1; }
