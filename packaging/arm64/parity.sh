#!/usr/bin/env bash
# Run the appliance in an arm64 Debian root under QEMU user emulation, on an x86-64 machine.
#
#   packaging/arm64/parity.sh prepare            # build (or reuse) the arm64 root, install edge
#   packaging/arm64/parity.sh serve LAYOUT VERSION PORT
#       serve the pipeline published to the OCI layout LAYOUT (tag VERSION) on 127.0.0.1:PORT,
#       in the foreground, until SIGTERM/SIGINT; mounts are undone on exit
#
# Needs root and Debian's qemu-user-static, binfmt-support and debootstrap (installed here when
# missing). tests/test_arm64.py::test_arm64_parity drives it when EDGE_TEST_ARM64=1. Cold (no
# root yet) about 15-20 minutes on 2 cores, most of it apt and pip under emulation; warm (root
# kept in ARM64_ROOT, or unpacked from ARM64_CACHE) under a minute.
#
# Environment:
#   ARM64_ROOT   the arm64 root (default /var/cache/edge-arm64/root); kept between runs
#   ARM64_CACHE  a tar.zst of a prepared root to start from, and to write after preparing
#   ARM64_SUITE  Debian suite (default bookworm)
#
# Trap (TOOLCHAIN.md): Debian 12's QEMU 7.2 passes the host's x86 /proc/cpuinfo through and
# `import onnxruntime` segfaults. So /sys is not mounted in the root and an arm64 cpuinfo is
# bind-mounted over its /proc/cpuinfo.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
root="${ARM64_ROOT:-/var/cache/edge-arm64/root}"
suite="${ARM64_SUITE:-bookworm}"
chroot_path="/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

say() { echo "arm64: $*" >&2; }
die() { echo "arm64: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (mounts, chroot, binfmt_misc)"

host_packages() {
    local missing=()
    command -v qemu-aarch64-static > /dev/null || missing+=(qemu-user-static)
    command -v update-binfmts > /dev/null || missing+=(binfmt-support)
    command -v debootstrap > /dev/null || missing+=(debootstrap)
    command -v zstd > /dev/null || missing+=(zstd)
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
    fi
}

enable_binfmt() {
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        update-binfmts --enable qemu-aarch64
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || die "qemu-aarch64 binfmt is not registered"
}

# The mirror the host's apt uses, so the root comes from the same place.
mirror() {
    local uri
    uri="$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
        2> /dev/null | grep -v security | head -n1 | awk '{print $2}')"
    echo "${uri:-http://deb.debian.org/debian}"
}

mounted=()
mount_root() {
    mount -t proc proc "$root/proc"
    mounted=("$root/proc" "${mounted[@]}")
    # An arm64 cpuinfo over the host's x86 one (QEMU 7.2 passes the host's through).
    cat > "$root/etc/arm64-cpuinfo" << 'EOF'
processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x3
CPU part	: 0xd0c
CPU revision	: 1

EOF
    mount --bind "$root/etc/arm64-cpuinfo" "$root/proc/cpuinfo"
    mounted=("$root/proc/cpuinfo" "${mounted[@]}")
    mount --bind /dev "$root/dev"
    mounted=("$root/dev" "${mounted[@]}")
    mount -t devpts devpts "$root/dev/pts" -o newinstance,ptmxmode=0666 2> /dev/null \
        || mount --bind /dev/pts "$root/dev/pts"
    mounted=("$root/dev/pts" "${mounted[@]}")
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2> /dev/null || true
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt" 2> /dev/null \
        || true
}

unmount_root() {
    local path
    for path in "${mounted[@]}"; do
        umount -l "$path" 2> /dev/null || true
    done
    mounted=()
}

in_root() {
    env -i PATH="$chroot_path" HOME=/root LANG=C.UTF-8 \
        SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$@"
}

prepare() {
    host_packages
    enable_binfmt
    if [ ! -x "$root/opt/venv/bin/python" ] && [ -n "${ARM64_CACHE:-}" ] && [ -f "$ARM64_CACHE" ]; then
        say "unpacking $ARM64_CACHE"
        rm -rf "$root"
        mkdir -p "$root"
        tar --zstd -xf "$ARM64_CACHE" -C "$root"
    fi
    if [ ! -x "$root/usr/bin/python3" ]; then
        say "debootstrap $suite arm64 from $(mirror) (about 2 minutes)"
        rm -rf "$root"
        mkdir -p "$root"
        debootstrap --arch=arm64 --foreign --variant=minbase "$suite" "$root" "$(mirror)" > /dev/null
        in_root chroot "$root" /debootstrap/debootstrap --second-stage > /dev/null
        trap unmount_root EXIT
        mount_root
        say "apt-get install python3 (about 2 minutes)"
        in_root chroot "$root" apt-get update -qq
        in_root DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq \
            --no-install-recommends python3 python3-venv python3-pip ca-certificates > /dev/null
        unmount_root
        trap - EXIT
    fi
    if [ ! -x "$root/opt/venv/bin/python" ]; then
        in_root chroot "$root" python3 -m venv /opt/venv
    fi

    say "building the edge-appliance wheel"
    rm -rf "$root/tmp/wheels"
    mkdir -p "$root/tmp/wheels"
    local python="${PYTHON:-python3}"
    "$python" -m pip wheel --no-deps --no-build-isolation -q -w "$root/tmp/wheels" "$repo" \
        > /dev/null
    trap unmount_root EXIT
    mount_root
    say "pip install (wheels only, about a minute the first time)"
    local wheel
    wheel="$(basename "$(ls "$root"/tmp/wheels/*.whl)")"
    in_root chroot "$root" /opt/venv/bin/pip install -q --only-binary=:all: \
        --force-reinstall --no-deps "/tmp/wheels/$wheel"
    in_root chroot "$root" /opt/venv/bin/pip install -q --only-binary=:all: "/tmp/wheels/$wheel"
    in_root chroot "$root" /opt/venv/bin/python -c \
        "import platform, onnxruntime, edge; print('arm64 root ok:', platform.machine(), onnxruntime.__version__)"
    unmount_root
    trap - EXIT
    if [ -n "${ARM64_CACHE:-}" ]; then
        say "writing $ARM64_CACHE"
        mkdir -p "$(dirname "$ARM64_CACHE")"
        tar --zstd -cf "$ARM64_CACHE.tmp" -C "$root" . && mv "$ARM64_CACHE.tmp" "$ARM64_CACHE"
    fi
}

serve() {
    local layout="$1" version="$2" port="$3"
    [ -x "$root/opt/venv/bin/edge" ] || die "no prepared root at $root: run '$0 prepare' first"
    [ -f "$layout/index.json" ] || die "$layout is not an OCI image layout"
    enable_binfmt
    local work="$root/srv/parity"
    rm -rf "$work"
    mkdir -p "$work/persist"
    cp -a "$layout" "$work/layout"

    local child=""
    stop() {
        if [ -n "$child" ]; then
            kill -TERM "$child" 2> /dev/null || true
            wait "$child" 2> /dev/null || true
        fi
        unmount_root
    }
    trap stop EXIT
    trap 'exit 143' TERM INT
    mount_root
    # Not through in_root: a backgrounded function is a subshell, and $! would name it instead
    # of the server (env execs chroot, which execs edge: one process to signal).
    env -i PATH="$chroot_path" HOME=/root LANG=C.UTF-8 \
        PIPELINE_URL="oci-layout:/srv/parity/layout:$version" CONFIG_CPUS=1 GRPC_PORT=0 \
        chroot "$root" /opt/venv/bin/edge serve --host 127.0.0.1 --port "$port" \
        --persist-dir /srv/parity/persist &
    child=$!
    wait "$child"
}

case "${1:-}" in
    prepare) prepare ;;
    serve)
        [ "$#" -eq 4 ] || die "usage: $0 serve LAYOUT VERSION PORT"
        serve "$2" "$3" "$4"
        ;;
    *) die "usage: $0 prepare | serve LAYOUT VERSION PORT" ;;
esac
