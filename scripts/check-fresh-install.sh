#!/usr/bin/env bash
# Run by hand, not in CI (it needs root, debootstrap, the network and about 15 minutes on 2 cores): prove that
# scripts/bootstrap.sh sets up a truly fresh machine. It builds a minimal Debian bookworm root
# (debootstrap --variant=minbase: no Python, no compiler, no CA bundle), clones this repository's
# current branch into it, runs bootstrap.sh there as root twice with a timer, and then prints what
# apt installed and checks that no kernel image, no initramfs, no enabled service of redis, haproxy,
# nginx or prometheus and no running process were left.
#
#   scripts/check-fresh-install.sh [--keep] [--root DIR]
#
# --keep leaves the root (default /var/tmp/fresh-root) for a look; it is removed otherwise.
# Nothing of the host is bind-mounted: the root gets its own proc, a read-only sysfs, a devpts
# and a tmpfs for /dev/shm (debootstrap makes the /dev nodes), and copies of resolv.conf and of
# the host's local CA certificates.
# Only what is committed is tested: the clone is of HEAD's branch. Stop it with Ctrl-C (or a TERM
# to its process group): everything is unmounted, processes in the root ended, the root removed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
ROOTFS=/var/tmp/fresh-root
KEEP=0
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) KEEP=1 ;;
        --root) ROOTFS="$2"; shift ;;
        *) echo "usage: $0 [--keep] [--root DIR]" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "check-fresh-install: run as root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "check-fresh-install: apt-get install --no-install-recommends debootstrap" >&2; exit 1; }
[ ! -e "$ROOTFS" ] || { echo "check-fresh-install: $ROOTFS exists; remove it first" >&2; exit 1; }
BRANCH="$(git rev-parse --abbrev-ref HEAD)"
STARTED="$(date -u '+%Y-%m-%d %H:%M UTC')"
WORK="$(mktemp -d)"

mounted() { grep -F " $ROOTFS/" /proc/mounts | cut -d' ' -f2 | sort -r; }
# Processes whose root is the fresh root: started by this check (through bootstrap.sh), so ours to end.
jailed() {
    for link in /proc/[0-9]*/root; do
        [ "$(readlink "$link" 2>/dev/null)" = "$ROOTFS" ] && { p="${link#/proc/}"; echo "${p%/root}"; }
    done
    return 0
}
cleanup() {
    local pid target
    for pid in $(jailed); do kill "$pid" 2>/dev/null || true; done
    for target in $(mounted); do umount "$target" 2>/dev/null || umount -l "$target" || true; done
    if [ -n "$(mounted)" ]; then
        echo "check-fresh-install: still mounted under $ROOTFS, not removing it" >&2
    elif [ "$KEEP" = 1 ]; then
        cp -r "$WORK" "$ROOTFS/root/check-fresh-install" 2>/dev/null || true
        echo "check-fresh-install: kept $ROOTFS (logs in $ROOTFS/root/check-fresh-install)" >&2
    else
        rm -rf --one-file-system "$ROOTFS"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== debootstrap bookworm (minbase) from $MIRROR" >&2
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# The network's own CAs (a TLS-intercepting proxy's, as on this workplace) as a machine on the
# same network has them: ca-certificates, once bootstrap.sh installs it, adds them to the bundle.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
fi
mount -t proc proc "$ROOTFS/proc"
mount -t sysfs -o ro sysfs "$ROOTFS/sys"
mkdir -p "$ROOTFS/dev/pts" "$ROOTFS/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$ROOTFS/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$ROOTFS/dev/shm"
[ -c "$ROOTFS/dev/null" ] || { echo "check-fresh-install: debootstrap made no /dev/null" >&2; exit 1; }

# Only the host's CA-bundle variables get in (pip and Node.js read no system store by themselves).
passed=()
for name in PIP_CERT NODE_EXTRA_CA_CERTS SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE; do
    [ -z "${!name:-}" ] || passed+=("$name=${!name}")
done
in_root() {
    env -i HOME=/root LANG=C.UTF-8 TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        "${passed[@]}" chroot "$ROOTFS" /bin/bash -c "$1"
}
packages() { in_root "dpkg-query -W -f='\${db:Status-Abbrev} \${Package}\n'" | awk '$1 == "ii" {print $2}' | sort; }
packages >"$WORK/base"
boot_links() { (cd "$ROOTFS/etc" && ls -d systemd/system/*.wants/* rc[0-6S].d/S* 2>/dev/null | sort); }
boot_links >"$WORK/links-base"

git clone -q --branch "$BRANCH" "$REPO" "$ROOTFS/root/privllm"
echo "== bootstrap.sh, first run (branch $BRANCH, $(git -C "$ROOTFS/root/privllm" rev-parse --short HEAD))" >&2
timed() {
    local start end
    start="$(date +%s.%N)"
    in_root "cd /root/privllm && scripts/bootstrap.sh" >"$WORK/$1.log" 2>&1 \
        || { tail -30 "$WORK/$1.log" >&2; echo "check-fresh-install: bootstrap.sh failed ($1 run)" >&2; exit 1; }
    end="$(date +%s.%N)"
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }'
}
first="$(timed first)"
echo "== bootstrap.sh, second run" >&2
second="$(timed second)"
packages >"$WORK/after"
comm -13 "$WORK/base" "$WORK/after" >"$WORK/added"

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
if grep -E '^(linux-image|initramfs-tools|dracut)' "$WORK/added"; then fail "a kernel image or initramfs tool was installed"; fi
shopt -s nullglob
for link in "$ROOTFS"/etc/systemd/system/*.wants/* "$ROOTFS"/etc/rc[0-6S].d/S*; do
    case "$(basename "$link")" in
        *redis* | *haproxy* | *nginx* | *prometheus*) fail "service enabled at boot: ${link#"$ROOTFS"}" ;;
    esac
done
left="$(jailed)"
[ -z "$left" ] || fail "processes left running in the fresh root: $(for p in $left; do tr '\0' ' ' <"/proc/$p/cmdline"; echo; done)"
[ -x "$ROOTFS/root/.cache/privllm/llama-server-0.3.36-noamx/llama-server" ] || fail "no llama-server was built"
[ -x "$ROOTFS/root/privllm/.venv/bin/twistd" ] || fail "no virtualenv with twistd"

echo "started: $STARTED; host: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, load now $(cut -d' ' -f1-3 /proc/loadavg)"
echo "base (debootstrap minbase): $(wc -l <"$WORK/base") packages"
echo "installed by bootstrap.sh: $(wc -l <"$WORK/added") packages, $(du -smx "$ROOTFS" | cut -f1) MB in the root afterwards"
echo "first run: ${first} s wall; second run: ${second} s wall"
echo "Node.js in the root: $(in_root 'PATH=/root/privllm/.venv/bin:$PATH; node --version') (the TypeScript SDK asks for >= 20.19; from the venv when bootstrap installed PyPI's)"
echo "boot links added (systemd wants, rc S*): $(comm -13 "$WORK/links-base" <(boot_links) | tr '\n' ' ')"
echo "packages added:"
tr '\n' ' ' <"$WORK/added" | fold -s -w 100
echo
[ "$failures" = 0 ] && echo "check-fresh-install: OK" || { echo "check-fresh-install: $failures failure(s)"; exit 1; }
