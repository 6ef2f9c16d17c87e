#!/usr/bin/env bash
# Installs and configures what ContainerPub needs on a Debian 12 host:
# Podman (with runc, see PITFALLS), busybox-static for test
# images, the subordinate ids of per-instance and per-build user namespaces,
# the Podman REST socket, the build Podman service (a store of its own), and
# the `cpub` Podman network; then checks the host's limits for a dense node.
# Idempotent: safe to run on every start.
set -euo pipefail

need=()
for bin in podman:podman runc:runc busybox:busybox-static nft:nftables ip:iproute2 curl:curl promtool:prometheus; do
  command -v "${bin%%:*}" >/dev/null 2>&1 || need+=("${bin#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup-host: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# crun fails on this kernel's cgroup v1 hybrid layout; runc with explicit
# ulimits works (PITFALLS.md). Podman tells runc to log its errors as JSON
# only for runtimes it knows by name: the list adds the two wrappers of runc
# below (cpub-runc, cpub-build-runc), so their errors read like runc's.
# Rewritten when it differs; the Podman services started below are
# restarted then (they read it once).
mkdir -p /etc/containers
conf=/etc/containers/containers.conf
conf_text='# containerpub: written by scripts/setup-host.sh
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
runtime_supports_json = ["crun", "runc", "kata", "runsc", "krun", "cpub-runc", "cpub-build-runc"]'
conf_changed=0
if [ "$(cat "$conf" 2>/dev/null || true)" != "$conf_text" ]; then
  printf '%s\n' "$conf_text" > "$conf"
  conf_changed=1
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

# The OCI runtime of a Podman service, from its /info.
runtime_path_of() {
  curl -fsS --unix-socket "$1" http://d/v4.0.0/libpod/info 2>/dev/null \
    | grep -o '"ociRuntime":{[^}]*}' | grep -o '"path":"[^"]*"' | cut -d'"' -f4
}
# The pid of the podman process listening on $1 (not a socket-activating
# systemd holding it too). `ss` lists the sockets of this network namespace
# only; the build service runs in one of its own (below), found by the
# command line this script starts it with.
service_pid_of() {
  local pid
  pid=$(ss -xlpn "src $1" 2>/dev/null | grep -o '"podman",pid=[0-9]*' | head -1 | cut -d= -f2 || true)
  [ -n "$pid" ] || pid=$(pgrep -o -f -- "^podman .* system service --time=0 unix://$1\$" || true)
  echo "$pid"
}
# Stops the Podman service listening on $1 (containers keep running: each
# has its conmon); fails when its process cannot be found or outlives 10 s.
stop_service() {
  local pid
  pid=$(service_pid_of "$1")
  [ -n "$pid" ] || return 1
  kill "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}
# Whether the service on $1 must be restarted to run $2 with this
# containers.conf: it answers, and runs another runtime or predates the file.
needs_restart() {
  local path
  path=$(runtime_path_of "$1" || true)
  [ -n "$path" ] && { [ "$path" != "$2" ] || [ "$conf_changed" = 1 ]; }
}

# The instances' service runs runc behind scripts/cpub-runc, which starts a
# container runc created without runc's pass over the host's mount table
# (its header; docs/BENCHMARKS.md, "Starts without runc's mount table").
# Installed as a copy: the service outlives the clone it was started from.
instance_runtime=/usr/local/lib/containerpub/cpub-runc
if ! cmp -s "$(dirname "$0")/cpub-runc" "$instance_runtime" 2>/dev/null; then
  install -D -m 0755 "$(dirname "$0")/cpub-runc" "$instance_runtime"
fi
sock=${CPUB_PODMAN_SOCKET:-/run/podman/podman.sock}
if needs_restart "$sock" "$instance_runtime"; then
  # Set up before this runtime or this containers.conf: restart it. Running
  # containers keep running (and the runtime they were created with).
  echo "setup-host: restarting the Podman service on $sock with the runtime $instance_runtime"
  stop_service "$sock" || {
    echo "setup-host: the Podman service on $sock could not be stopped (its podman process not found, or still running): stop it and run setup-host.sh again" >&2
    exit 1
  }
fi
if ! curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
  mkdir -p "$(dirname "$sock")" /var/log/containerpub
  # From /: conmon inherits the service's working directory and fails every
  # container start once that directory is deleted (a removed clone, say).
  (cd / && exec nohup podman --runtime "$instance_runtime" system service --time=0 "unix://$sock" >/var/log/containerpub/podman-service.log 2>&1) &
  for _ in $(seq 1 100); do
    curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null || { echo "setup-host: podman API socket did not come up" >&2; exit 1; }
fi
instance_rt=$(runtime_path_of "$sock" || true)
if [ "$instance_rt" != "$instance_runtime" ]; then
  # Another service on the socket (systemd's podman.socket starts one
  # without --runtime): instances work, their starts go through runc.
  echo "setup-host: WARNING the Podman service on $sock runs '$instance_rt', not $instance_runtime: starts of containers initialized ahead go through runc, slower with many instances (stop that service, e.g. systemctl disable --now podman.socket, and run setup-host.sh again)" >&2
fi
echo "setup-host: podman $(podman --version | awk '{print $3}') API on $sock (runtime ${instance_rt:-unknown})"

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
# Its OCI runtime is runc behind scripts/cpub-build-runc, which gives the
# root directory of each RUN step's root file system to the build's mapped
# root (storage 1.43 leaves it owned by host root: no RUN could create
# anything in `/`, nor runc the mount points an image lacks). Installed as a
# copy: the service outlives the clone it was started from.
build_runtime=/usr/local/lib/containerpub/cpub-build-runc
if ! cmp -s "$(dirname "$0")/cpub-build-runc" "$build_runtime" 2>/dev/null; then
  install -D -m 0755 "$(dirname "$0")/cpub-build-runc" "$build_runtime"
fi
build_sock=${CPUB_BUILD_PODMAN_SOCKET:-/run/podman/cpub-build.sock}
# The storage driver of the running build service.
build_driver() {
  curl -fsS --unix-socket "$build_sock" http://d/v4.0.0/libpod/info \
    | grep -o '"graphDriverName":"[^"]*"' | cut -d'"' -f4
}
# Whether the build service on $1 runs in this script's (the host's)
# network namespace:
# one started before it got a namespace of its own (below).
in_host_netns() {
  local pid
  pid=$(service_pid_of "$1")
  [ -n "$pid" ] && [ "$(readlink "/proc/$pid/ns/net")" = "$(readlink /proc/$$/ns/net)" ]
}
if needs_restart "$build_sock" "$build_runtime" || in_host_netns "$build_sock"; then
  # A build service set up before this runtime or this containers.conf:
  # restart it (a build running on it fails and says so; its cgroup is
  # reaped by cpub-control).
  echo "setup-host: restarting the build service with the runtime $build_runtime"
  stop_service "$build_sock" || {
    echo "setup-host: the build service on $build_sock could not be stopped (its podman process not found, or still running): stop it and run setup-host.sh again" >&2
    exit 1
  }
fi
if ! curl -fsS --unix-socket "$build_sock" http://d/_ping >/dev/null 2>&1; then
  mkdir -p "$(dirname "$build_sock")" /var/log/containerpub
  # In a network namespace of its own with nothing but a loopback that is
  # down: the service fetches `ADD <url>` itself, outside any RUN step's
  # sandbox, and in the host's namespace that reached every service of the
  # host and its network (control/src/containerfile.rs refuses URLs too;
  # this holds whatever a Containerfile makes Buildah fetch). It needs no
  # network: images come from local stores, RUN steps get none, and its
  # API is a Unix socket.
  (cd / && CONTAINERS_STORAGE_CONF="$build_conf" exec nohup unshare --net podman --runtime "$build_runtime" --tmpdir /run/libpod-cpub-build system service --time=0 "unix://$build_sock" >/var/log/containerpub/podman-build-service.log 2>&1) &
  for _ in $(seq 1 100); do
    curl -fsS --unix-socket "$build_sock" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS --unix-socket "$build_sock" http://d/_ping >/dev/null || { echo "setup-host: podman build API socket did not come up" >&2; exit 1; }
fi
build_driver=$(build_driver)
if [ "$build_driver" != vfs ]; then
  echo "setup-host: the build service on $build_sock uses the $build_driver storage driver, not vfs (started with another configuration?)" >&2
  exit 1
fi
build_rt=$(runtime_path_of "$build_sock" || true)
if [ "$build_rt" != "$build_runtime" ]; then
  echo "setup-host: the build service on $build_sock runs $build_rt, not $build_runtime" >&2
  exit 1
fi
if in_host_netns "$build_sock"; then
  echo "setup-host: the build service on $build_sock runs in the host's network namespace" >&2
  exit 1
fi
echo "setup-host: podman build API on $build_sock (vfs store, runtime $build_runtime, no network)"

# The function network, and the firewall that keeps functions away from the
# host's services and from each other (PITFALLS: a bridge, even --internal,
# reaches every host service bound to 0.0.0.0 through its gateway). The host
# may still open connections to containers (the proxy does); replies pass.
#
# The network is sized for density (issue 15): created on
# CPUB_NETWORK_SUBNET (default a /20, 4,093 addresses; Podman's default /24
# holds 252 instances). An existing network keeps its subnet — Podman 4.3
# cannot change it — and a too small one is reported; with
# CPUB_NETWORK_RECREATE=1 it is removed and created again on the new subnet,
# which works only while no container uses it. CPUB_NETWORK names another
# network (tests use their own); its firewall table is then
# cpub_isolation_<name>.
net=${CPUB_NETWORK:-cpub}
want_subnet=${CPUB_NETWORK_SUBNET:-10.90.0.0/20}
want_instances=${CPUB_NODE_MAX_INSTANCES:-1000}
want_ahead=${CPUB_INITIALIZED_AHEAD:-24}
case "$net" in (*[!A-Za-z0-9_-]*|'') echo "setup-host: CPUB_NETWORK=$net: letters, digits, - and _ only" >&2; exit 1;; esac
if ! podman network exists "$net"; then
  podman network create --subnet "$want_subnet" "$net" >/dev/null
fi
subnet=$(podman network inspect "$net" --format '{{range .Subnets}}{{.Subnet}}{{end}}')
prefix=${subnet##*/}
hosts=$(( (1 << (32 - prefix)) - 3 ))
if [ "$hosts" -lt "$want_instances" ]; then
  users=$(podman ps -a --filter "network=$net" -q | wc -l)
  if [ "${CPUB_NETWORK_RECREATE:-0}" = 1 ] && [ "$users" -eq 0 ]; then
    echo "setup-host: network $net ($subnet, $hosts addresses) is recreated on $want_subnet"
    podman network rm "$net" >/dev/null
    podman network create --subnet "$want_subnet" "$net" >/dev/null
    subnet=$(podman network inspect "$net" --format '{{range .Subnets}}{{.Subnet}}{{end}}')
  else
    echo "setup-host: WARNING network $net is $subnet: $hosts addresses for a budget of $want_instances instances" >&2
    echo "setup-host:   the proxy lowers its instance budget to $hosts. To grow it, stop the proxies of this host" >&2
    echo "setup-host:   ($users containers use $net now) and run: CPUB_NETWORK_RECREATE=1 $0" >&2
  fi
fi
bridge=$(podman network inspect "$net" --format '{{.NetworkInterface}}')
if [ "$net" = cpub ]; then table=cpub_isolation; else table="cpub_isolation_${net//-/_}"; fi
nft -f - <<NFT
table inet $table
delete table inet $table
table inet $table {
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
table bridge $table
delete table bridge $table
table bridge $table {
  chain forward {
    type filter hook forward priority -10; policy accept;
    ip saddr $subnet ip daddr $subnet drop
  }
}
NFT
echo "setup-host: network $net ($subnet on $bridge) isolated by nftables table $table"

# Host limits for a node of CPUB_NODE_MAX_INSTANCES live instances (issue
# 15). Checked, not changed: each line that falls short says what to raise
# (`sysctl -w`, and a file in /etc/sysctl.d to keep it). Per instance the
# host holds a conmon process and the function's (pids), a few open files
# in conmon and in the Podman service (nofile), a session keyring from runc
# (kernel keys, owned by root), a bridge port (and a place in the receive
# backlog when the bridge floods a broadcast) and a neighbour entry, and a
# conntrack entry per open connection; inotify instances are taken by
# conmon and Podman's event watchers. Containers initialized ahead
# (CPUB_INITIALIZED_AHEAD) hold the same, but the function's processes.
n=$((want_instances + want_ahead))
short=0
check() { # name have need why
  if [ "$2" -lt "$3" ]; then
    echo "setup-host: LIMIT $1 = $2, below $3 for $n instances ($4): sysctl -w $1=$3" >&2
    short=$((short + 1))
  fi
}
sysval() { sysctl -n "$1" 2>/dev/null || echo 0; }
check kernel.pid_max "$(sysval kernel.pid_max)" $(( n * 4 + 16384 )) "a conmon and the function's processes per instance"
check kernel.threads-max "$(sysval kernel.threads-max)" $(( n * 8 + 16384 )) "threads of conmon, runc and the functions"
check fs.file-max "$(sysval fs.file-max)" $(( n * 64 + 65536 )) "files of conmon, the Podman service and the proxy"
check fs.inotify.max_user_instances "$(sysval fs.inotify.max_user_instances)" $(( n + 128 )) "watchers of conmon and Podman"
check fs.inotify.max_user_watches "$(sysval fs.inotify.max_user_watches)" $(( n * 16 + 8192 )) "watches of conmon and Podman"
check kernel.keys.root_maxkeys "$(sysval kernel.keys.root_maxkeys)" $(( n * 2 + 1000 )) "a session keyring per container (runc)"
check kernel.keys.root_maxbytes "$(sysval kernel.keys.root_maxbytes)" $(( n * 50 + 25000 )) "the keyrings' bytes"
check net.ipv4.neigh.default.gc_thresh3 "$(sysval net.ipv4.neigh.default.gc_thresh3)" $(( n + 256 )) "a neighbour entry per instance on the bridge"
check net.ipv4.neigh.default.gc_thresh2 "$(sysval net.ipv4.neigh.default.gc_thresh2)" $(( n + 128 )) "a neighbour entry per instance on the bridge"
# A broadcast on the bridge (an ARP request for an instance's address) is
# queued once per port on one CPU's receive backlog, newest port first:
# beyond the backlog the ports added first miss it, and their instances
# answer no new connection (seen at 1,000 live with the default 1,000).
check net.core.netdev_max_backlog "$(sysval net.core.netdev_max_backlog)" $(( n * 2 )) "a broadcast on the bridge is queued once per port"
if [ -e /proc/sys/net/netfilter/nf_conntrack_max ]; then
  check net.netfilter.nf_conntrack_max "$(sysval net.netfilter.nf_conntrack_max)" $(( n * 64 )) "connections to and from instances"
fi
service_pid=$(service_pid_of "$sock")
if [ -n "$service_pid" ] && [ -r "/proc/$service_pid/limits" ]; then
  nofile=$(awk '/Max open files/ {print $4}' "/proc/$service_pid/limits")
  if [ "$nofile" != unlimited ] && [ "$nofile" -lt $(( n * 8 + 1024 )) ]; then
    echo "setup-host: LIMIT the Podman service's open files = $nofile, below $(( n * 8 + 1024 )) for $n instances: restart it under 'ulimit -n $(( n * 8 + 1024 ))'" >&2
    short=$((short + 1))
  fi
fi
if [ "$n" -gt 1024 ]; then
  echo "setup-host: LIMIT a Linux bridge takes at most 1024 ports: CPUB_NODE_MAX_INSTANCES=$want_instances plus CPUB_INITIALIZED_AHEAD=$want_ahead needs more than one function network" >&2
  short=$((short + 1))
fi
if [ "$short" -eq 0 ]; then
  echo "setup-host: host limits are enough for $want_instances live instances and $want_ahead initialized ahead"
else
  echo "setup-host: $short host limits are short for $n live instances (see LIMIT lines above)" >&2
fi

# The platform's base images (python, node, debian for dynamically linked
# binaries) in the build store: made from Debian's packages on first need
# (about 2 minutes), then left as they are (scripts/base-images.sh). Without
# a reachable Debian mirror static functions still work: warn, go on.
bash "$(dirname "$0")/base-images.sh" --if-missing \
  || echo "setup-host: WARNING: the base images could not be built; python, node and dynamically linked functions will fail to build until scripts/base-images.sh succeeds" >&2
