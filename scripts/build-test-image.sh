#!/usr/bin/env bash
# Build ringjobs-test:latest: an image FROM scratch holding Debian's static busybox
# (package busybox-static) with its applets linked under /bin, a world-writable /tmp
# and a minimal /etc/passwd. No registry is needed, so the docker tests run offline.
#
# Idempotent: the image is rebuilt only when the busybox binary or this recipe
# changed (both are recorded as image labels).
set -euo pipefail

IMAGE="${RINGJOBS_TEST_IMAGE:-ringjobs-test:latest}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
# Bump when the image layout below changes, so existing images get rebuilt.
RECIPE_VERSION=1

die() {
    echo "build-test-image: $*" >&2
    exit 1
}

[[ -x "$BUSYBOX" ]] || die "$BUSYBOX not found; install it with: apt-get install -y busybox-static"
command -v docker >/dev/null || die "docker CLI not found; install it with: apt-get install -y docker.io"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer; start dockerd first"

busybox_sha="$(sha256sum "$BUSYBOX" | cut -d' ' -f1)"
existing="$(docker image inspect -f \
    '{{index .Config.Labels "io.ringjobs.busybox-sha256"}}/{{index .Config.Labels "io.ringjobs.test-image-version"}}' \
    "$IMAGE" 2>/dev/null || true)"
if [[ "$existing" == "$busybox_sha/$RECIPE_VERSION" ]]; then
    echo "build-test-image: $IMAGE is up to date (busybox sha256 ${busybox_sha:0:12})"
    exit 0
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT

rootfs="$context/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/root"
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root"
cp "$BUSYBOX" "$rootfs/bin/busybox"
chmod 0755 "$rootfs/bin/busybox"
while read -r applet; do
    [[ -n "$applet" && "$applet" != busybox ]] && ln -s busybox "$rootfs/bin/$applet"
done < <("$BUSYBOX" --list)
# Names for `id` and for jobs that set `config.user: nobody`.
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF

# A tar keeps the symlinks, the sticky bit and root ownership exactly; ADD unpacks it.
tar -C "$rootfs" --numeric-owner --owner=0 --group=0 -cf "$context/rootfs.tar" .
rm -rf "$rootfs"
cat >"$context/Dockerfile" <<EOF
FROM scratch
ADD rootfs.tar /
LABEL io.ringjobs.test="true" \\
      io.ringjobs.busybox-sha256="$busybox_sha" \\
      io.ringjobs.test-image-version="$RECIPE_VERSION"
CMD ["/bin/sh"]
EOF

echo "build-test-image: building $IMAGE from $BUSYBOX (sha256 ${busybox_sha:0:12})"
# The legacy builder needs no buildx plugin and works with every client against
# Docker 20.10; FROM scratch never touches a registry.
# Its deprecation notice is noise: show the builder's output only when it fails.
if ! DOCKER_BUILDKIT=0 docker build --quiet --tag "$IMAGE" "$context" >"$context/build.log" 2>&1; then
    cat "$context/build.log" >&2
    die "docker build of $IMAGE failed"
fi
docker run --rm --network none "$IMAGE" sh -c 'echo hi >/dev/null' \
    || die "$IMAGE was built but cannot run sh"
echo "build-test-image: built $IMAGE"
