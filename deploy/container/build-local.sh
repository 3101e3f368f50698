#!/usr/bin/env bash
# Build Veil's image on a machine with no container registry and no Docker engine.
#
#   sudo deploy/container/build-local.sh            # -> localhost/veil:0.1.0
#
# The Containerfile's base, python:3.11.11-slim-bookworm, comes from a registry. Without one this
# script makes a stand-in base image: a Debian bookworm root filesystem (debootstrap, from a Debian
# mirror, which apt can reach) with Debian's python3 (3.11.2), python3-venv and python3-pip,
# imported as localhost/veil-python-base:bookworm, and builds the Containerfile with
# --build-arg PYTHON_IMAGE=<that image>. Debian's python is /usr/bin/python3.11, not the official
# image's /usr/local/bin/python3.11; the Containerfile only uses the venv's interpreter, so the
# image behaves the same on either base (docs/deployment.md#building-without-a-registry).
#
# Needs root and Debian's buildah, podman and debootstrap (the script says how to install them).
# Environment:
#   VEIL_IMAGE           the tag to build (default localhost/veil:0.1.0)
#   VEIL_BASE_IMAGE      the stand-in base's tag (default localhost/veil-python-base:bookworm)
#   VEIL_CONTAINER_WORK  scratch directory for the root filesystem (default /var/tmp/veil-container)
#   DEBIAN_MIRROR        default: the first deb.debian.org-style URI in this machine's apt sources
#   VEIL_REBUILD_BASE=1  make the base again even if it exists
# Nothing it makes goes into the repository: the rootfs lives in $VEIL_CONTAINER_WORK, the images
# in containers/storage (/var/lib/containers/storage).
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
image=${VEIL_IMAGE:-localhost/veil:0.1.0}
base=${VEIL_BASE_IMAGE:-localhost/veil-python-base:bookworm}
work=${VEIL_CONTAINER_WORK:-/var/tmp/veil-container}

if [ "$(id -u)" != 0 ]; then
    echo "build-local.sh: run as root (debootstrap and rootful buildah/podman need it)" >&2
    exit 2
fi
missing=()
for tool in buildah podman debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "build-local.sh: missing ${missing[*]}: apt-get install -y buildah podman debootstrap" >&2
    exit 2
fi

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -v security | head -n1 | tr -d ' ' || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi

start=$(date +%s)
if [ "${VEIL_REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$base"; then
    echo "== base image $base: debootstrap bookworm from $mirror"
    rm -rf "$work/rootfs"
    mkdir -p "$work"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
    # the official image's apt sources: the runtime stage installs firejail & co from them
    security=${mirror%/debian}/debian-security
    rm -f "$work/rootfs/etc/apt/sources.list"
    cat >"$work/rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    chroot "$work/rootfs" apt-get clean
    rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin
    tar -C "$work/rootfs" --numeric-owner -c . \
        | podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$base"
    rm -rf "$work/rootfs"
fi

# A host that reaches PyPI through a TLS-inspecting proxy trusts that proxy's CA in its own bundle
# (this machine does). The build's `pip wheel` must trust it too: the host's bundle and a pip.conf
# naming it are bind-mounted into every RUN step. Volumes are not committed, so neither the CA nor
# the pip.conf ends up in any layer of the image. VEIL_BUILD_HOST_CA=0 turns this off.
mounts=()
host_ca=/etc/ssl/certs/ca-certificates.crt
if [ "${VEIL_BUILD_HOST_CA:-1}" = 1 ] && [ -f "$host_ca" ]; then
    mkdir -p "$work"
    printf '[global]\ncert = %s\n' "$host_ca" >"$work/pip.conf"
    mounts=(--volume "$host_ca:$host_ca:ro" --volume "$work/pip.conf:/etc/pip.conf:ro")
fi

echo "== building $image from $base"
# --isolation chroot: no user or network namespaces for RUN steps, which works on hosts where
# runc/crun cannot create them (nested in another sandbox). --layers: a rebuild reuses the steps
# whose inputs did not change. --format docker: the OCI image format has no HEALTHCHECK (buildah
# drops it with a warning), the Docker format keeps it; both run on every runtime. --force-rm: no
# working container is left behind when a step fails.
buildah bud --format docker --layers --force-rm --isolation "${BUILDAH_ISOLATION:-chroot}" "${mounts[@]}" \
    --build-arg PYTHON_IMAGE="$base" -f "$here/Containerfile" -t "$image" "$here"

size=$(podman image inspect --format '{{.Size}}' "$image")
echo "== built $image: $((size / 1000000)) MB, $(($(date +%s) - start)) s"
