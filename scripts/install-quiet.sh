#!/usr/bin/env bash
# Install Debian packages that ship a service (redis-server, haproxy, nginx, prometheus) without letting it run:
# policy-rc.d answers 101 ("not allowed") to every start the packages' scripts ask for during
# the install, then each package's service is stopped and disabled in case anything got past.
# Idempotent; an existing policy-rc.d (Docker images ship one) is put back as it was.
set -euo pipefail
# Each argument is a package, or package:service when the service is named otherwise
# (nginx-light:nginx).
[ $# -gt 0 ] || { echo "usage: $0 package[:service]..." >&2; exit 2; }
policy=/usr/sbin/policy-rc.d
marker="# scripts/install-quiet.sh: no service starts during this install"
saved="$(mktemp)"
had_policy=0
# Our own file, left by a run that was killed outright, is not the machine's: it goes.
if [ -e "$policy" ] && ! grep -qxF "$marker" "$policy"; then
    had_policy=1
    cp -p "$policy" "$saved"
fi
restore() {
    if [ "$had_policy" = 1 ]; then cp -p "$saved" "$policy"; else rm -f "$policy"; fi
    rm -f "$saved"
}
trap restore EXIT
printf '#!/bin/sh\n%s\nexit 101\n' "$marker" > "$policy"
chmod 755 "$policy"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${@%%:*}"
for entry in "$@"; do
    service="${entry#*:}"
    if [ -d /run/systemd/system ]; then
        systemctl disable --now "$service" >/dev/null 2>&1 || true
    else
        systemctl disable "$service" >/dev/null 2>&1 || true  # offline: removes the boot links
        [ -x "/etc/init.d/$service" ] && "/etc/init.d/$service" stop >/dev/null 2>&1 || true
    fi
    update-rc.d "$service" disable >/dev/null 2>&1 || true
done
