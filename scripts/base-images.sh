#!/usr/bin/env bash
# Builds the platform's base images from Debian's own packages and imports
# them into the BUILD Podman service's store (builds run there and never
# pull; ARCHITECTURE.md, "Build sandbox"):
#
#   localhost/cpub-base/debian:$VERSION   glibc, libgcc, libstdc++: dynamically linked binaries
#   localhost/cpub-base/python:$VERSION   + CPython 3.11 and its standard library (precompiled)
#   localhost/cpub-base/node:$VERSION     + Node.js 18
#
# Each is a root filesystem made by mmdebstrap (`--variant=extract`: the
# named packages and their dependencies are unpacked, no maintainer script
# runs, no Essential set: no shell, no coreutils), stripped of dpkg, apt's
# state, documentation and device nodes, then `podman import`ed with
# `USER 65534:65534` and `WORKDIR /app`. The function's files go to /app.
#
# Usage: base-images.sh [--if-missing] [debian|python|node ...]
#   --if-missing   build only the images the build store lacks (what
#                  setup-host.sh runs on every start; the first run takes
#                  about a minute, see README.md)
#   (no names)     all three
# Environment: CPUB_BUILD_PODMAN_SOCKET (default /run/podman/cpub-build.sock),
# CPUB_DEBIAN_MIRROR (default: the first Debian URI of this host's apt
# sources, else http://deb.debian.org/debian), CPUB_BASE_SUITE (bookworm).
#
# VERSION is the tag the control plane builds from (control/src/runtimes.rs,
# BASE_IMAGE_VERSION; a unit test checks they agree). Changing what goes into
# an image means a new VERSION: a tag never changes meaning, so existing
# functions rebuild exactly as before.
set -euo pipefail

VERSION=1
sock=${CPUB_BUILD_PODMAN_SOCKET:-/run/podman/cpub-build.sock}
suite=${CPUB_BASE_SUITE:-bookworm}

if_missing=0
names=()
for arg in "$@"; do
  case "$arg" in
    --if-missing) if_missing=1 ;;
    debian|python|node) names+=("$arg") ;;
    *) echo "base-images: unknown argument '$arg' (usage: base-images.sh [--if-missing] [debian|python|node ...])" >&2; exit 64 ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=(debian python node)

bpodman() { podman --remote --url "unix://$sock" "$@"; }
if ! bpodman version >/dev/null 2>&1; then
  echo "base-images: the build Podman service on $sock does not answer (run scripts/setup-host.sh)" >&2
  exit 1
fi

todo=()
for name in "${names[@]}"; do
  if [ "$if_missing" = 1 ] && bpodman image exists "localhost/cpub-base/$name:$VERSION"; then
    continue
  fi
  todo+=("$name")
done
[ ${#todo[@]} -gt 0 ] || exit 0

if ! command -v mmdebstrap >/dev/null 2>&1; then
  echo "base-images: installing mmdebstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }
fi

mirror=${CPUB_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | head -1 | tr -d ' ' || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi
security=${mirror%/debian*}/debian-security

work=$(mktemp -d /var/tmp/cpub-base-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

# What each image holds on top of nothing (dependencies come along).
packages() {
  case "$1" in
    debian) echo "libc6,libgcc-s1,libstdc++6" ;;
    python) echo "libc6,python3.11-minimal,libpython3.11-stdlib,media-types" ;;
    node) echo "libc6,nodejs" ;;
  esac
}

for name in "${todo[@]}"; do
  started=$(date +%s.%N)
  root="$work/$name"
  tag="localhost/cpub-base/$name:$VERSION"
  echo "base-images: building $tag from $mirror $suite ($(packages "$name"))"
  mmdebstrap --quiet --variant=extract --include="$(packages "$name")" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --format=directory "$suite" "$root" \
    "deb $mirror $suite main" "deb $security $suite-security main" >"$work/$name.log" 2>&1 \
    || { cat "$work/$name.log" >&2; echo "base-images: mmdebstrap failed for $name" >&2; exit 1; }

  # Strip what a function never runs: the package manager mmdebstrap always
  # brings (dpkg, tar), apt's state, docs, systemd/cron/logrotate snippets,
  # and device nodes (Podman mounts /dev at run time).
  rm -rf "$root"/usr/bin/dpkg* "$root"/usr/bin/update-alternatives "$root"/bin/tar \
    "$root"/usr/sbin "$root"/sbin "$root"/usr/libexec/dpkg "$root"/usr/share/dpkg \
    "$root"/etc/dpkg "$root"/etc/apt "$root"/var/lib/apt "$root"/var/lib/dpkg "$root"/var/cache \
    "$root"/var/log "$root"/etc/cron.daily "$root"/etc/logrotate.d "$root"/lib/systemd \
    "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/locale "$root"/usr/share/info \
    "$root"/usr/share/lintian "$root"/usr/share/bug "$root"/dev
  # Mount points (/proc, /dev, /sys; runc can also make them, in builds
  # through scripts/cpub-build-runc), the function's directory, and a
  # writable-at-run-time /tmp (a tmpfs is mounted there).
  mkdir -p "$root"/proc "$root"/dev "$root"/sys "$root"/tmp "$root"/app "$root"/etc
  chmod 1777 "$root"/tmp
  printf 'root:x:0:0:root:/root:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n' > "$root"/etc/passwd
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root"/etc/group
  changes=(--change 'USER 65534:65534' --change 'WORKDIR /app' --change 'ENV HOME=/tmp'
           --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin'
           --change "LABEL io.containerpub.base=$name" --change "LABEL io.containerpub.base.version=$VERSION")
  case "$name" in
    python)
      ln -sf python3.11 "$root"/usr/bin/python3
      # The root file system is read-only at run time: without compiled
      # modules every cold start would compile the stdlib it imports.
      chroot "$root" /usr/bin/python3.11 -m compileall -q /usr/lib/python3.11 >/dev/null
      changes+=(--change 'ENV PYTHONDONTWRITEBYTECODE=1' --change 'ENV PYTHONUNBUFFERED=1')
      ;;
    node)
      test -x "$root"/usr/bin/node || { echo "base-images: no /usr/bin/node in the node image" >&2; exit 1; }
      ;;
  esac
  [ -e "$root"/lib64/ld-linux-x86-64.so.2 ] || [ -L "$root"/lib64/ld-linux-x86-64.so.2 ] \
    || { echo "base-images: $name has no /lib64/ld-linux-x86-64.so.2" >&2; exit 1; }
  if [ -e "$root"/bin/sh ] || [ -e "$root"/usr/bin/sh ]; then
    echo "base-images: $name unexpectedly has a shell" >&2; exit 1
  fi
  tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$work/$name.tar" .
  old=$(bpodman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
  bpodman import "${changes[@]}" "$work/$name.tar" "$tag" >/dev/null
  if [ -n "$old" ] && [ "$old" != "$(bpodman image inspect --format '{{.Id}}' "$tag")" ]; then
    bpodman rmi "$old" >/dev/null 2>&1 || true   # still used by a running build: left
  fi
  rm -rf "$root" "$work/$name.tar"
  printf 'base-images: %s ready (%s MB) in %.0f s\n' "$tag" \
    "$(( $(bpodman image inspect --format '{{.Size}}' "$tag") / 1000000 ))" \
    "$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')"
done
