#!/usr/bin/env bash
# Installs silobox on a Debian 12 host, as root: the Debian packages it uses at run time, a
# virtual environment under /opt/silobox with silobox (and, with --test, the test tools) in it,
# and the `silo`/`silod` commands on PATH. Safe to run again.
set -euo pipefail

PREFIX=${SILOBOX_PREFIX:-/opt/silobox}
SRC=$(cd "$(dirname "$0")/.." && pwd)
WITH_TESTS=0
[ "${1:-}" = "--test" ] && WITH_TESTS=1

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (silobox manages namespaces, cgroups and mounts)" >&2
    exit 1
fi

# busybox-static: the built-in busybox image; tini: --init; libseccomp2: syscall filters;
# python3-venv: the interpreter silobox runs on (Debian's, which starts fastest);
# libnftables1/nftables + iproute2: the networking service's NAT and port mapping;
# e2fsprogs: mkfs.ext4/e2fsck/resize2fs for sandbox disks (util-linux: losetup for inspection);
# gcc + libc6-dev (libc.a): the static container entry helper, built below and rebuilt by silod
# if its source changes (silobox/kernel/entry/helper.c).
PKGS="busybox-static tini libseccomp2 python3 python3-venv ca-certificates libnftables1 nftables iproute2 e2fsprogs gcc libc6-dev"
# The utility VM (--isolation hyperv, and the cgroup v2 tests): QEMU (its virtiofsd comes with
# qemu-system-common), lz4 to unpack the guest kernel (see below).
PKGS="$PKGS qemu-system-x86 lz4"
# Tests only: skopeo and umoci check the image archive formats against independent tools;
# gcc builds a static probe for syscalls busybox has no applet for (keyctl);
# docker-registry (+ apache2-utils for htpasswd -B, openssl for a test CA): the registry the
# pull/push tests start on 127.0.0.1; iptables (its -nft and -legacy tools, no rules): the
# forward-rule tests build Docker's and legacy iptables' FORWARD DROP in namespaces of their own.
[ "$WITH_TESTS" = 1 ] && PKGS="$PKGS procps iproute2 util-linux skopeo umoci gcc libc6-dev mmdebstrap docker-registry apache2-utils openssl iptables"
# Tests only: python3-dev and libyaml-dev build PyYAML 5.4.1 (with its C loader) for docker-compose.
[ "$WITH_TESTS" = 1 ] && PKGS="$PKGS python3-dev libyaml-dev"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing
fi
# The docker-registry package enables a registry service on :5000; the tests start their own on
# free ports, so none is left running.
if [ "$WITH_TESTS" = 1 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
elif [ "$WITH_TESTS" = 1 ] && [ -x /etc/init.d/docker-registry ]; then
    /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
    update-rc.d docker-registry disable >/dev/null 2>&1 || true
fi

[ -x "$PREFIX/bin/python" ] || /usr/bin/python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install -q --disable-pip-version-check --upgrade pip==24.3.1
# The CRI's Python stubs are build output: generated from silobox/cri/api.proto with the
# pinned grpcio-tools before the package is installed (not kept in git; see docs/kubernetes.md).
"$PREFIX/bin/pip" install -q --disable-pip-version-check grpcio-tools==1.85.1 protobuf==7.36.2
(cd "$SRC" && "$PREFIX/bin/python" -m silobox.cri.protogen)
if [ "$WITH_TESTS" = 1 ]; then
    "$PREFIX/bin/pip" install -q --disable-pip-version-check "$SRC[test]"
else
    "$PREFIX/bin/pip" install -q --disable-pip-version-check "$SRC"
fi
if [ "$WITH_TESTS" = 1 ]; then
    # docker-compose 1.29 in a venv of its own (see scripts/compose-requirements.txt for why);
    # the compose tests run /opt/silobox-compose/bin/docker-compose.
    COMPOSE=${SILOBOX_COMPOSE_PREFIX:-/opt/silobox-compose}
    [ -x "$COMPOSE/bin/python" ] || /usr/bin/python3 -m venv "$COMPOSE"
    CPIP="$COMPOSE/bin/pip"
    "$CPIP" install -q --disable-pip-version-check pip==24.3.1
    "$CPIP" install -q --disable-pip-version-check setuptools==69.5.1 wheel==0.43.0 cython==0.29.37
    "$CPIP" install -q --disable-pip-version-check --no-build-isolation PyYAML==5.4.1
    "$CPIP" install -q --disable-pip-version-check -r "$SRC/scripts/compose-requirements.txt"
fi
# The utility VM's guest kernel: Debian's cloud kernel package, downloaded with apt and unpacked
# (never installed: the host keeps its own kernel), reduced to an uncompressed vmlinux and the
# few virtio modules the guest loads. Redone only when the package's version changes.
UVM="$PREFIX/uvm"
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
if [ -z "$KPKG" ]; then
    echo "install.sh: apt knows no linux-image-cloud-amd64; the utility VM is not installed" >&2
elif [ "$(cat "$UVM/release" 2>/dev/null)" != "${KPKG#linux-image-}" ] || \
        [ ! -e "$UVM/modules/net.order" ]; then   # (an install before the guest's network card)
    ktmp=$(mktemp -d)
    trap 'rm -rf "$ktmp"' EXIT
    (cd "$ktmp" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG")
    dpkg-deb -x "$ktmp"/"$KPKG"_*.deb "$ktmp/root"
    "$PREFIX/bin/python" -m silobox.compute.uvm install-kernel "$ktmp/root" "$UVM"
    rm -rf "$ktmp"
    trap - EXIT
fi
# The container entry helper: a static binary that silod runs from a sealed memfd.
"$PREFIX/bin/python" -m silobox.kernel.entry build >/dev/null
# The per-container monitor: a static binary each shim execs once its container is set up.
"$PREFIX/bin/python" -m silobox.compute.monitor build >/dev/null
# The CRI's pod holder (silobox/cri/pause.c): a static program instead of a pause image.
"$PREFIX/bin/python" -m silobox.cri.pause >/dev/null
# silo starts isolated and without site (-IS): no .pth files, sitecustomize or PYTHON*
# variables, about 8 ms less per command; the CLI needs nothing but silobox and the stdlib.
SITE=$("$PREFIX/bin/python" -I -c 'import os, silobox; print(os.path.dirname(os.path.dirname(silobox.__file__)))')
cat > "$PREFIX/bin/silo" <<EOF
#!$PREFIX/bin/python3 -IS
import sys
sys.path.append("$SITE")
from silobox.cli.main import main
sys.exit(main())
EOF
ln -sf "$PREFIX/bin/silo" /usr/local/bin/silo
ln -sf "$PREFIX/bin/silod" /usr/local/bin/silod
echo "silobox installed in $PREFIX (silo, silod on PATH)"
