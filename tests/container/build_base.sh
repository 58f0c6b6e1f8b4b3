#!/usr/bin/env bash
# Builds the stand-in for `python:3.12-slim-bookworm` that the container test uses on machines that cannot
# pull from a registry: a Debian bookworm minbase root filesystem with python3 and python3-venv, imported
# as a Docker image. The Dockerfiles only rely on `python3 -m venv`, which both bases provide.
#
# The host's CA bundle goes into this test base (and only here): HTTPS from build containers may be
# intercepted on CI machines and verifies only with the host's bundle. The product image never gets it.
#
# Usage: build_base.sh [IMAGE_TAG]   (default local/python-base; needs root, debootstrap and a running dockerd)
set -euo pipefail

image_tag="${1:-local/python-base}"
docker_cli="${DOCKER_CLI:-/usr/bin/docker}"

# The mirror apt already uses on this machine, so debootstrap works wherever apt does.
mirror="$(grep -hoE '^(URIs:|deb)[[:space:]]+https?://[^[:space:]]+' /etc/apt/sources.list.d/*.sources \
            /etc/apt/sources.list.d/*.list /etc/apt/sources.list 2>/dev/null \
          | awk '{print $2}' | grep -v -e security -e '\.list$' | head -n 1 || true)"
mirror="${mirror:-http://deb.debian.org/debian}"

rootfs="$(mktemp -d /tmp/resnet-serve-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

echo "build_base: debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
  || { tail -n 30 "$rootfs.log"; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

host_bundle=/etc/ssl/certs/ca-certificates.crt
if [[ -f "$host_bundle" ]]; then
  install -D -m 0644 "$host_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi

# Keep the base small: no package cache, no apt lists (images that need apt run `apt-get update`).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

tar -C "$rootfs" -c . | "$docker_cli" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' \
  - "$image_tag" >/dev/null
echo "build_base: imported $image_tag ($("$docker_cli" image inspect -f '{{.Size}}' "$image_tag" | awk '{printf "%.0f MB", $1/1e6}'))"
