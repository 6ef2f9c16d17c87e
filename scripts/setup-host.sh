#!/usr/bin/env bash
# Installs and configures what ContainerPub needs on a Debian 12 host:
# Podman (with runc, see PITFALLS), busybox-static for test
# images, the subordinate ids of per-instance and per-build user namespaces,
# the Podman REST socket, the build Podman service (a store of its own), and
# the `cpub` Podman network.
# Idempotent: safe to run on every start.
set -euo pipefail

need=()
for bin in podman:podman runc:runc busybox:busybox-static nft:nftables curl:curl; do
  command -v "${bin%%:*}" >/dev/null 2>&1 || need+=("${bin#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup-host: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# crun fails on this kernel's cgroup v1 hybrid layout; runc with explicit
# ulimits works (PITFALLS.md).
mkdir -p /etc/containers
conf=/etc/containers/containers.conf
if ! grep -q '# containerpub' "$conf" 2>/dev/null; then
  cat > "$conf" <<'CONF'
# containerpub: written by scripts/setup-host.sh
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
fi

# User namespaces: every function instance gets its own range of host ids
# (`--userns=auto`, pool/src/spec.rs), taken by Podman from the subordinate
# ids of the user `containers`. The range is the upper half of the 32-bit id
# space (2147483647 + 2^31 ends at 4294967294, the last valid id): far above
# any real user, room for 32768 instances of 65536 ids. An existing
# `containers` line (another range chosen by the admin) is kept.
for f in /etc/subuid /etc/subgid; do
  if ! grep -q '^containers:' "$f" 2>/dev/null; then
    echo 'containers:2147483647:2147483648' >> "$f"
  fi
done
# Builds get a user namespace each too, from the ids of `cpub-build`: the
# 2^30 ids just below the instances' range, so a build never shares a host
# id with an instance (nor, while both run, with another build).
for f in /etc/subuid /etc/subgid; do
  if ! grep -q '^cpub-build:' "$f" 2>/dev/null; then
    echo 'cpub-build:1073741824:1073741823' >> "$f"
  fi
done
echo "setup-host: user namespaces from $(grep '^containers:' /etc/subuid | head -1) (subuid), $(grep '^containers:' /etc/subgid | head -1) (subgid); builds from $(grep '^cpub-build:' /etc/subuid | head -1)"

sock=${CPUB_PODMAN_SOCKET:-/run/podman/podman.sock}
if ! curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
  mkdir -p "$(dirname "$sock")" /var/log/containerpub
  # From /: conmon inherits the service's working directory and fails every
  # container start once that directory is deleted (a removed clone, say).
  (cd / && exec nohup podman system service --time=0 "unix://$sock" >/var/log/containerpub/podman-service.log 2>&1) &
  for _ in $(seq 1 100); do
    curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null || { echo "setup-host: podman API socket did not come up" >&2; exit 1; }
fi
echo "setup-host: podman $(podman --version | awk '{print $3}') API on $sock"

# The build service: a second rootful Podman API with a store of its own.
# Podman 4.3 builds correct images in a user namespace only on a store that
# chowns layers (`vfs`); with the instances' overlay store (idmapped mounts)
# the first RUN fails (`mkdir …/rootfs/proc: permission denied`) and files
# are committed with host ids (ARCHITECTURE.md, "Build sandbox"). The
# control plane moves each built image to the instances' store. It has its
# own libpod tmp dir too (where Podman marks that it ran since boot).
build_conf=/etc/containers/cpub-build/storage.conf
if ! grep -q '# containerpub' "$build_conf" 2>/dev/null; then
  mkdir -p "$(dirname "$build_conf")"
  cat > "$build_conf" <<'CONF'
# containerpub: written by scripts/setup-host.sh (the build service's store)
[storage]
driver = "vfs"
graphroot = "/var/lib/containers/cpub-build"
runroot = "/run/containers/cpub-build"
[storage.options]
root-auto-userns-user = "cpub-build"
auto-userns-min-size = 1024
auto-userns-max-size = 65536
CONF
fi
build_sock=${CPUB_BUILD_PODMAN_SOCKET:-/run/podman/cpub-build.sock}
if ! curl -fsS --unix-socket "$build_sock" http://d/_ping >/dev/null 2>&1; then
  mkdir -p "$(dirname "$build_sock")" /var/log/containerpub
  (cd / && CONTAINERS_STORAGE_CONF="$build_conf" exec nohup podman --tmpdir /run/libpod-cpub-build system service --time=0 "unix://$build_sock" >/var/log/containerpub/podman-build-service.log 2>&1) &
  for _ in $(seq 1 100); do
    curl -fsS --unix-socket "$build_sock" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS --unix-socket "$build_sock" http://d/_ping >/dev/null || { echo "setup-host: podman build API socket did not come up" >&2; exit 1; }
fi
build_driver=$(curl -fsS --unix-socket "$build_sock" http://d/v4.0.0/libpod/info | grep -o '"graphDriverName":"[^"]*"' | cut -d'"' -f4)
if [ "$build_driver" != vfs ]; then
  echo "setup-host: the build service on $build_sock uses the $build_driver storage driver, not vfs (started with another configuration?)" >&2
  exit 1
fi
echo "setup-host: podman build API on $build_sock (vfs store)"

# The function network, and the firewall that keeps functions away from the
# host's services and from each other (PITFALLS: a bridge, even --internal,
# reaches every host service bound to 0.0.0.0 through its gateway). The host
# may still open connections to containers (the proxy does); replies pass.
podman network exists cpub || podman network create cpub >/dev/null
bridge=$(podman network inspect cpub --format '{{.NetworkInterface}}')
subnet=$(podman network inspect cpub --format '{{range .Subnets}}{{.Subnet}}{{end}}')
nft -f - <<NFT
table inet cpub_isolation
delete table inet cpub_isolation
table inet cpub_isolation {
  chain input {
    type filter hook input priority -10; policy accept;
    iifname "$bridge" ct state established,related accept
    iifname "$bridge" drop
  }
  chain forward {
    type filter hook forward priority -10; policy accept;
    iifname "$bridge" ct state established,related accept
    iifname "$bridge" drop
  }
  # netavark removes the bridge with its last container; a stale instance
  # address must then fail here, never leave through the default route.
  chain output {
    type filter hook output priority -10; policy accept;
    ip daddr $subnet oifname != "$bridge" reject with icmpx type admin-prohibited
  }
}
table bridge cpub_isolation
delete table bridge cpub_isolation
table bridge cpub_isolation {
  chain forward {
    type filter hook forward priority -10; policy accept;
    ip saddr $subnet ip daddr $subnet drop
  }
}
NFT
echo "setup-host: network cpub ($subnet on $bridge) isolated by nftables table cpub_isolation"

# The platform's base images (python, node, debian for dynamically linked
# binaries) in the build store: made from Debian's packages on first need
# (about 2 minutes), then left as they are (scripts/base-images.sh). Without
# a reachable Debian mirror static functions still work: warn, go on.
bash "$(dirname "$0")/base-images.sh" --if-missing \
  || echo "setup-host: WARNING: the base images could not be built; python, node and dynamically linked functions will fail to build until scripts/base-images.sh succeeds" >&2
