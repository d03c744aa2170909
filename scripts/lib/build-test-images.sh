#!/usr/bin/env bash
# Builds the images the integration and e2e tests run containers from. No image registry is
# reachable here, so they are made locally: registrator-test/busybox:latest is a static busybox
# imported as a single-layer image.
#
# Idempotent: the tar fed to `docker import` is built deterministically, and the image is
# re-imported only when the tar's digest (plus the import options) differs from the stamp left by
# the last import, or the image that stamp names is gone.
#
# Usage: build-test-images.sh    (needs a Docker daemon that answers; see ensure-docker.sh)
set -euo pipefail

IMAGE="registrator-test/busybox:latest"
# The listed applets are what the tests are expected to use; a few extra are cheap and save a
# rebuild the first time a test needs them.
APPLETS=(sh httpd nc sleep ping cat echo true false ls mkdir env kill ps grep
         hostname ip printf test head wc seq timeout nslookup sed)
# Changing these must change the stamp too, so they are part of what is hashed.
CHANGES=('CMD ["sh"]')

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
stamp_dir="${XDG_CACHE_HOME:-$HOME/.cache}/registrator-tests/images"
# One stamp per engine: each lane (DOCKER_HOST) has its own image store.
engine_key="$(tr -c 'a-zA-Z0-9\n' _ <<<"${DOCKER_HOST:-unix:///var/run/docker.sock}")"
stamp_file="$stamp_dir/$(tr '/:' '__' <<<"$IMAGE")${DOCKER_HOST:+.$engine_key}.stamp"
mkdir -p "$stamp_dir"

# Two test runs on one machine share the daemon; serialise so they never import twice at once.
exec 9>"$stamp_dir/.lock"
flock 9

"$here/ensure-pkg.sh" /bin/busybox busybox-static

work="$(mktemp -d "${TMPDIR:-/tmp}/test-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root/bin" "$root/www" "$root/etc" "$root/tmp"
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in "${APPLETS[@]}"; do
  ln -s busybox "$root/bin/$applet"
done
printf '<html><body>registrator-test ok</body></html>\n' > "$root/www/index.html"
# ps and id show names instead of bare numbers with these.
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' \
  > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

# Fixed order, times and owners so that the same inputs give byte-identical tars.
tar -C "$root" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$work/rootfs.tar" .
digest="$( { sha256sum < "$work/rootfs.tar"; printf '%s\n' "${CHANGES[@]}"; } | sha256sum | cut -d' ' -f1)"

current_id="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
if [[ -n "$current_id" && -f "$stamp_file" ]] && [[ "$(cat "$stamp_file")" == "$digest $current_id" ]]; then
  echo "build-test-images: $IMAGE is up to date" >&2
  exit 0
fi

echo "build-test-images: importing $IMAGE" >&2
change_args=()
for change in "${CHANGES[@]}"; do
  change_args+=(--change "$change")
done
docker import "${change_args[@]}" - "$IMAGE" < "$work/rootfs.tar" >/dev/null
new_id="$(docker image inspect --format '{{.Id}}' "$IMAGE")"
echo "$digest $new_id" > "$stamp_file"
echo "build-test-images: $IMAGE is $new_id" >&2
