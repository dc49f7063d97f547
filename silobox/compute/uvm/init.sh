#!/.sbx/busybox sh
# PID 1 of the utility VM until the agent takes over. It loads the virtio modules, mounts the
# host's read-only share (virtiofs, tag "host": /usr, the silobox venv and source), the writable
# disk (/dev/vda, ext4) and a pure cgroup v2 hierarchy, then execs the guest agent, which talks to
# the host over the virtio-serial port "silobox.ctl". `sbx.mode=probe` only proves the guest
# reached userspace (the host's accelerator check) and resets the machine at once.
B=/.sbx/busybox
$B mount -t proc proc /proc
if [ ! -e /.sbx/switched ] && ! $B grep -q sbx.mode=probe /proc/cmdline; then
    $B umount /proc
    # The initramfs is the kernel's rootfs, which pivot_root(2) cannot leave: containers in
    # the VM need a real root, so everything moves to a tmpfs first.
    $B mkdir /newroot
    $B mount -t tmpfs -o mode=755 rootfs /newroot
    for entry in /* /.sbx; do
        [ "$entry" = /newroot ] || $B cp -a "$entry" /newroot/
    done
    $B touch /newroot/.sbx/switched
    exec $B switch_root /newroot /init
fi
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
mode=agent
mmio=""
nics=""
for arg in $($B cat /proc/cmdline); do
    case "$arg" in
        sbx.mode=*) mode=${arg#sbx.mode=} ;;
        sbx.nic=*) nics="$nics ${arg#sbx.nic=}" ;;
        virtio_mmio.device=*) mmio="$mmio device=${arg#virtio_mmio.device=}" ;;
    esac
done
if [ "$mode" = probe ]; then
    echo "silobox-uvm: userspace reached" > /dev/console
    $B reboot -f
fi
fail() {
    echo "silobox-uvm: $*" > /dev/console
    $B reboot -f
}
for ko in $($B cat /.sbx/modules/order); do
    case "$ko" in
        virtio_mmio.ko) $B insmod "/.sbx/modules/$ko" $mmio ;;
        *) $B insmod "/.sbx/modules/$ko" ;;
    esac || fail "insmod $ko failed"
done
# Network cards (a hyperv container's endpoints, taps on the HNS switch), each given as
# sbx.nic=MAC,NAME,ADDRESS/PREFIX,GATEWAY|-,MTU|0[,ADDRESS6/PREFIX,GATEWAY6|-]: found by MAC,
# named as the endpoint's interface, addressed statically (silobox has no DHCP).
if [ -n "$nics" ]; then
    for ko in $($B cat /.sbx/modules/net.order); do
        $B insmod "/.sbx/modules/$ko" || fail "insmod $ko failed"
    done
    i=0
    for nic in $nics; do   # temporary names first: eth1 may be what eth0 is called now
        mac=${nic%%,*}
        for dev in /sys/class/net/*; do
            [ "$($B cat "$dev/address")" = "$mac" ] && $B ip link set dev "${dev##*/}" name "sbxnic$i"
        done
        i=$((i + 1))
    done
    i=0
    for nic in $nics; do
        IFS_=$IFS; IFS=,; set -- $nic; IFS=$IFS_
        $B ip link set dev "sbxnic$i" name "$2" || fail "no network card with MAC $1"
        [ "$5" != 0 ] && $B ip link set dev "$2" mtu "$5"
        $B ip addr add "$3" dev "$2" || fail "cannot address $2"
        if [ -n "$6" ]; then   # no duplicate address detection: IPAM made it unique
            echo 0 > "/proc/sys/net/ipv6/conf/$2/accept_dad"
            $B ip -6 addr add "$6" dev "$2" || fail "cannot address $2 (IPv6)"
        fi
        $B ip link set dev "$2" up
        [ "$4" != - ] && { $B ip route add default via "$4" dev "$2" || fail "no route via $4"; }
        [ -n "$7" ] && [ "$7" != - ] && $B ip -6 route add default via "$7" dev "$2"
        i=$((i + 1))
    done
fi
$B mount -t virtiofs -o ro host /host || fail "cannot mount the host share"
$B mount --bind /host/usr /usr || fail "no /usr in the host share"
# A container's directories, shared read-write when the VM is one container's (tag "rw").
$B mkdir /rw
$B mount -t virtiofs rw /rw 2>/dev/null || $B rmdir /rw
[ -d /host/opt/silobox ] && $B mount --bind /host/opt/silobox /opt/silobox
[ -d /host/src ] && $B mount --bind /host/src /src
if [ -b /dev/vda ]; then
    # A hyperv container's disk comes back at each start: if its last VM ended without a
    # clean shutdown, e2fsck (the host's, from /usr) repairs what the journal cannot.
    /usr/sbin/e2fsck -p /dev/vda > /dev/console 2>&1
    [ $? -ge 4 ] && echo "silobox-uvm: e2fsck left errors on the disk" > /dev/console
    $B mount -t ext4 -o noatime /dev/vda /scratch || fail "cannot mount the scratch disk"
    $B rm -rf /scratch/tmp /scratch/var   # the guest's own, not the container's
    $B mkdir -p /scratch/tmp /scratch/var
    $B chmod 1777 /scratch/tmp
    $B mount --bind /scratch/tmp /tmp
    $B mount --bind /scratch/var /var
fi
if [ -d /host/var/lib/dpkg ]; then
    $B mkdir -p /var/lib/dpkg
    $B mount --bind /host/var/lib/dpkg /var/lib/dpkg
fi
$B mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
$B mkdir -p /dev/pts /dev/shm
$B mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
$B mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
$B ln -sf /proc/self/fd /dev/fd
$B ln -sf /proc/self/fd/0 /dev/stdin
$B ln -sf /proc/self/fd/1 /dev/stdout
$B ln -sf /proc/self/fd/2 /dev/stderr
$B mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || fail "cannot mount cgroup2"
$B mount -t bpf bpf /sys/fs/bpf 2>/dev/null
$B hostname silobox-uvm
$B ip link set lo up 2>/dev/null
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin HOME=/root LANG=C.UTF-8
export PYTHONPATH=/src PYTHONDONTWRITEBYTECODE=1
python=/usr/bin/python3
[ -x /opt/silobox/bin/python ] && python=/opt/silobox/bin/python
exec $python -m silobox.compute.uvm.agent
