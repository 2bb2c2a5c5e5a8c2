#!/bin/sh
# Runs the agent from a root file system made by rootfs.sh the way the DaemonSet in
# deploy/kubernetes runs the image, without a container engine (none is needed to check
# the recipe): in its own mount and pid namespaces, chrooted into the tree, the tree
# read-only, with the DaemonSet's host mounts bound in, the capability bounding set cut
# to the DaemonSet's list, as its user, and with no_new_privs when the DaemonSet sets
# allowPrivilegeEscalation: false.
#
# What a container runtime gives the pod, and how it is made here:
#   /proc                 hostPID: true, so the host's pid namespace's procfs (bound)
#   /sys                  the runtime's own sysfs, read-only, /sys/devices/virtual/powercap
#                         masked as runc and containerd mask it (CVE-2020-8694)
#   /sys/kernel/tracing   hostPath /sys/kernel/tracing, read-only
#   /host/sys             hostPath /sys, read-only (--host-sys DIR binds DIR instead)
#   /etc/energy-agent     the ConfigMap (--config DIR)
#   /dev, /tmp, /run      tmpfs; /dev with null, zero, full, random, urandom
# The network namespace is the caller's, so listeners are reachable as the node's are
# through a hostPort.
#
# usage: deploy/image/run-rootfs.sh [--user nonroot|root] [--no-new-privs]
#            [--caps cap_a,cap_b] [--host-sys DIR] [--config DIR] [--bind SRC:DST]...
#            ROOTFS -- AGENT-ARGS...
# Needs root, unshare (util-linux) and capsh (libcap2-bin). The agent's exit status is
# this script's; to stop it, signal the agent (this script's grandchild: unshare's
# parent ignores SIGINT and SIGTERM).
set -eu

user=nonroot
nnp=""
caps=cap_bpf,cap_perfmon,cap_dac_read_search
host_sys=/sys
config=""
binds=""
args_at_start="$*"
[ -n "$args_at_start" ] || { sed -n '2,30p' "$0" >&2; exit 2; }

inside=${ENERGY_RUN_ROOTFS_INSIDE:-}
if [ -z "$inside" ]; then
    ENERGY_RUN_ROOTFS_INSIDE=1 exec unshare --mount --pid --fork --propagation private -- "$0" "$@"
fi

while [ $# -gt 0 ]; do
    case $1 in
        --user) user=$2; shift 2 ;;
        --no-new-privs) nnp=--no-new-privs; shift ;;
        --caps) caps=$2; shift 2 ;;
        --host-sys) host_sys=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --bind) binds="$binds $2"; shift 2 ;;
        --) shift; break ;;
        -*) echo "$0: unknown option $1" >&2; exit 2 ;;
        *) root=$1; shift ;;
    esac
done
: "${root:?$0: no ROOTFS given}"
[ -x "$root/usr/bin/energy-agent" ] || { echo "$0: $root/usr/bin/energy-agent missing (run rootfs.sh)" >&2; exit 2; }
case $user in
    nonroot) ids="--gid=65532 --groups=65532 --uid=65532" ;;
    root) ids="--gid=0 --groups=0 --uid=0" ;;
    *) echo "$0: --user is nonroot or root" >&2; exit 2 ;;
esac

# readOnlyRootFilesystem: true
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
# hostPID: true
mount --rbind /proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
if [ -d "$root/sys/devices/virtual/powercap" ]; then
    mount -t tmpfs -o ro,size=0 tmpfs "$root/sys/devices/virtual/powercap"
fi
mount --bind /sys/kernel/tracing "$root/sys/kernel/tracing"
mount -o remount,bind,ro "$root/sys/kernel/tracing"
mount --rbind "$host_sys" "$root/host/sys"
mount -o remount,bind,ro "$root/host/sys"
mount -t tmpfs -o nosuid,mode=0755 tmpfs "$root/dev"
for d in null zero full random urandom; do
    touch "$root/dev/$d"
    mount --bind "/dev/$d" "$root/dev/$d"
done
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs "$root/run"
if [ -n "$config" ]; then
    mount --bind "$config" "$root/etc/energy-agent"
    mount -o remount,bind,ro "$root/etc/energy-agent"
fi
for b in $binds; do
    mount --bind "${b%%:*}" "$root${b#*:}"
done

# securityContext.capabilities: drop ALL, add $caps: every other capability leaves the
# bounding set, so no process in the tree can gain it.
capsh=$(command -v capsh) || { echo "$0: capsh not found (apt-get install libcap2-bin)" >&2; exit 2; }
all=$("$capsh" --print | sed -n 's/^Bounding set =//p' | tr ',' ' ')
drop=""
for c in $all; do
    case ",$caps," in
        *",$c,"*) ;;
        *) drop="$drop${drop:+,}$c" ;;
    esac
done
exec env -i PATH=/usr/bin HOME=/ "$capsh" --drop="$drop" --chroot="$root" $ids $nnp \
    --shell=/usr/bin/energy-agent -- "$@"
