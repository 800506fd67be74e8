#!/usr/bin/env bash
# Host hardening for router and nodes (run as root): no swap, so no page of a conversation
# reaches a disk; no core dumps; kernel settings that narrow what a local attacker sees.
set -euo pipefail
swapoff -a
sed -i.privllm-bak -E 's@^([^#].*[[:space:]]swap[[:space:]].*)$@# \1  # disabled for privllm@' /etc/fstab
systemctl mask swap.target >/dev/null 2>&1 || true
cat > /etc/sysctl.d/90-privllm.conf <<'CONF'
vm.swappiness = 0
kernel.core_pattern = |/bin/false
fs.suid_dumpable = 0
kernel.kptr_restrict = 2
kernel.dmesg_restrict = 1
kernel.yama.ptrace_scope = 2
kernel.unprivileged_bpf_disabled = 1
net.ipv4.conf.all.rp_filter = 1
net.ipv4.conf.all.accept_redirects = 0
net.ipv6.conf.all.accept_redirects = 0
net.ipv4.conf.all.send_redirects = 0
net.ipv4.tcp_syncookies = 1
CONF
sysctl --system >/dev/null
mkdir -p /etc/systemd/coredump.conf.d
printf '[Coredump]\nStorage=none\nProcessSizeMax=0\n' > /etc/systemd/coredump.conf.d/privllm.conf
echo "swap off, core dumps off, sysctl settings in /etc/sysctl.d/90-privllm.conf"
