#!/usr/bin/env bash
# An emulated ARM64 device, end to end: bench's light device install in an arm64 Debian
# userland under qemu user-mode emulation, run against STORE's deployed cells.
#
#   scripts/arm64_device.sh STORE
#
# Builds once (cached in $MEDQ_ARM64_ROOT, default ~/.cache/medq-bench/arm64-bookworm, outside
# the repository) an arm64 bookworm userland (debootstrap, about 320 MB), installs into it
# medq-bench[device] from a wheel of this checkout with the pins of constraints.txt (ONNX
# Runtime's aarch64 wheel), then runs the real device path: a results server on 127.0.0.1
# (`bench serve`, one token per device of STORE's cells) that STORE is uploaded to with its
# deploy files, `bench device pull` from it inside the userland, `bench measure --profile
# raspberry-pi-5` with accuracy mode, `bench export --device arm64-emulated` and `bench import`
# of that bundle into STORE. (The pull is from a server, not a bundle: bookworm's Python 3.11.2
# lacks tarfile.data_filter, which reading a bundle uses.) STORE ends up with the measurements of device arm64-emulated, marked
# `emulated` (their answers are real, their latency is the emulator's).
#
# Needs root (chroot, mounts), binfmt_misc with qemu-aarch64 registered (apt-get install
# qemu-user-static binfmt-support) and debootstrap; exits 2 saying which is missing.
# Environment: MEDQ_ARM64_ROOT (the userland), MEDQ_ARM64_PROFILE (raspberry-pi-5),
# MEDQ_ARM64_PORT (18787, the server's port), BENCH (the host's bench, default .venv/bin/bench).
# MEDQ_BINFMT (/proc/sys/fs/binfmt_misc, where binfmt_misc is looked for).
set -euo pipefail

die() { echo "arm64_device.sh: $*" >&2; exit 2; }

[[ $# -eq 1 ]] || die "usage: scripts/arm64_device.sh STORE"
STORE=$(realpath "$1")
HERE=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${MEDQ_ARM64_ROOT:-$HOME/.cache/medq-bench/arm64-bookworm}
PROFILE=${MEDQ_ARM64_PROFILE:-raspberry-pi-5}
BENCH=${BENCH:-$HERE/.venv/bin/bench}
PYTHON=$(dirname "$BENCH")/python
DEVICE=arm64-emulated
PORT=${MEDQ_ARM64_PORT:-18787}
URL=http://127.0.0.1:$PORT
SERVER_PID=

[[ -d $STORE ]] || die "$STORE: no such store"
[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, chroot and mounts)"
BINFMT=${MEDQ_BINFMT:-/proc/sys/fs/binfmt_misc}
mountpoint -q "$BINFMT" || die "binfmt_misc is not mounted: mount -t binfmt_misc binfmt_misc $BINFMT"
[[ -e $BINFMT/qemu-aarch64 ]] || die "qemu-aarch64 is not registered with binfmt_misc: apt-get install qemu-user-static binfmt-support"
grep -q enabled "$BINFMT/qemu-aarch64" || die "qemu-aarch64 is registered but disabled: update-binfmts --enable qemu-aarch64"

started=$(date +%s)
if [[ ! -f $ROOT/.medq-userland ]]; then
    command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install debootstrap"
    echo "building the arm64 userland in $ROOT (once; several minutes)"
    rm -rf "$ROOT.partial"
    mkdir -p "$(dirname "$ROOT")"
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$ROOT.partial"
    touch "$ROOT.partial/.medq-userland"
    rm -rf "$ROOT"
    mv "$ROOT.partial" "$ROOT"
fi

cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null || true
    mountpoint -q "$ROOT/proc" && umount "$ROOT/proc" || true
}
trap cleanup EXIT
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
# /sys stays unmounted: ONNX Runtime's cpuinfo crashed (SIGSEGV) under qemu with /sys bound.
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
[[ -f /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt \
    "$ROOT/etc/ssl/certs/ca-certificates.crt"

inside() { chroot "$ROOT" /usr/bin/env -i PATH=/opt/medq/bin:/usr/bin:/bin HOME=/root \
    LANG=C.UTF-8 MEDQ_DEVICE=$DEVICE MEDQ_EMULATED=1 "$@"; }

WORK=$ROOT/tmp/medq
rm -rf "$WORK"
mkdir -p "$WORK/wheel"
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WORK/wheel" "$HERE"
WHEEL=$(basename "$(ls "$WORK"/wheel/medq_bench-*.whl)")
cp "$HERE/constraints.txt" "$WORK/constraints.txt"
# The dependencies are installed once per constraints.txt and pyproject.toml; medq-bench's own
# wheel (its build differs byte for byte each time) is reinstalled on its own every run.
stamp=$(cat "$HERE/constraints.txt" "$HERE/pyproject.toml" | sha256sum | cut -c1-16)
if [[ ! -f $ROOT/opt/medq/.stamp-$stamp ]]; then
    echo "installing medq-bench[device] ($WHEEL) into the arm64 userland"
    inside /usr/bin/python3 -m venv --clear /opt/medq
    inside /opt/medq/bin/pip install --quiet -c /tmp/medq/constraints.txt \
        "medq-bench[device] @ file:///tmp/medq/wheel/$WHEEL"
    touch "$ROOT/opt/medq/.stamp-$stamp"
else
    inside /opt/medq/bin/pip install --quiet --no-deps --force-reinstall \
        "/tmp/medq/wheel/$WHEEL"
fi
ready=$(date +%s)

SRV=$WORK/server
mkdir -p "$SRV"
devices=$("$PYTHON" -c 'import sys
from bench.store import ResultsStore
print(" ".join(sorted({r.device for r in ResultsStore(sys.argv[1]).records()})))' "$STORE")
declare -A tokens
for d in $devices; do
    tokens[$d]=$("$BENCH" serve token create --device "$d" --data "$SRV" 2>/dev/null)
done
# The emulated device's own token: the server gives the test images only to a device's token.
DEVICE_TOKEN=$("$BENCH" serve token create --device "$DEVICE" --data "$SRV" 2>/dev/null)
"$BENCH" serve --data "$SRV" --host 127.0.0.1 --port "$PORT" >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
    "$PYTHON" -c 'import sys, httpx; httpx.get(sys.argv[1] + "/api/v1/records").raise_for_status()' \
        "$URL" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "bench serve exited: $(tail -3 "$WORK/serve.log")"
    sleep 0.2
done
for d in $devices; do
    "$BENCH" upload --to "$URL" --token "${tokens[$d]}" --store "$STORE" --artifacts deploy --quiet
done
inside bench device pull --from "$URL" --token "$DEVICE_TOKEN" --store /tmp/medq/store
inside bench measure --profile "$PROFILE" --store /tmp/medq/store --quiet
inside bench export --store /tmp/medq/store --device $DEVICE --out /tmp/medq/arm64.tar.gz
"$BENCH" import "$WORK/arm64.tar.gz" --store "$STORE"
done_at=$(date +%s)
echo "arm64-emulated: userland and install $((ready - started)) s, device path $((done_at - ready)) s"
