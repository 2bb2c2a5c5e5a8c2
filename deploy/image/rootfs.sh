#!/bin/sh
# Assembles the runtime root file system of the energy-agent image: the agent (debug
# info stripped), the shared libraries it links as ldd lists them, CA certificates, a
# passwd/group with the `nonroot` user (65532), the mount points the DaemonSet binds,
# and the agent's file capabilities.
#
# The Dockerfile's builder stage runs exactly this, and its runtime stage is
# `FROM scratch` + `COPY --from=builder /rootfs/ /`; tests/tests/image.rs runs it too and
# then runs the agent from the tree with run-rootfs.sh, so the tree under test is the
# image's.
#
# usage: deploy/image/rootfs.sh BINARY DEST
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 BINARY DEST" >&2
    exit 2
fi
bin=$1
dest=$2

# The capabilities the agent needs, and no others (why each: docs/deploy.md). The same
# list is in deploy/kubernetes/daemonset.yaml and the Helm chart's values.yaml; the
# DaemonSet's bounding set must hold every one of them, or execve fails with EPERM.
CAPS=cap_bpf,cap_perfmon,cap_dac_read_search

[ -x "$bin" ] || { echo "$0: $bin is not an executable" >&2; exit 1; }
if [ -e "$dest" ] && [ -n "$(ls -A "$dest")" ]; then
    echo "$0: $dest exists and is not empty" >&2
    exit 1
fi

mkdir -p "$dest/usr/bin" "$dest/etc/energy-agent" "$dest/etc/ssl/certs" \
    "$dest/proc" "$dest/sys" "$dest/dev" "$dest/run" "$dest/host/sys" "$dest/tmp"
chmod 1777 "$dest/tmp"

install -m 0755 "$bin" "$dest/usr/bin/energy-agent"
strip --strip-debug "$dest/usr/bin/energy-agent"

# Every library ldd resolves, and the dynamic loader, at the paths the binary names.
libs=$(ldd "$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }')
[ -n "$libs" ] || { echo "$0: ldd found no libraries for $bin" >&2; exit 1; }
for lib in $libs; do
    mkdir -p "$dest$(dirname "$lib")"
    cp -L "$lib" "$dest$lib"
done

# TLS roots for HTTPS OTLP endpoints and the carbon APIs.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$dest/etc/ssl/certs/"
fi

printf 'root:x:0:0:root:/:/usr/bin/energy-agent\nnonroot:x:65532:65532:nonroot:/:/usr/bin/energy-agent\n' \
    > "$dest/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$dest/etc/group"

# As `nonroot`, the agent gets its capabilities from the file (a non-root process gains
# none from the container's capability set alone).
setcap "$CAPS+ep" "$dest/usr/bin/energy-agent"
echo "$dest: $(du -sh "$dest" | cut -f1), energy-agent with $(getcap "$dest/usr/bin/energy-agent" | cut -d' ' -f2-)"
