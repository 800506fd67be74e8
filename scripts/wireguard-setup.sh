#!/usr/bin/env bash
# Set up the private WireGuard network between the router and inference nodes (run as root
# on each host). Uses wg-quick with the kernel module where present, or wireguard-go.
#
#   scripts/wireguard-setup.sh router 10.0.0.1 <node1-pubkey>=10.0.0.2=<node1-public-ip> ...
#   scripts/wireguard-setup.sh node   10.0.0.2 <router-pubkey>=10.0.0.1=<router-public-ip>
#
# The private key is created once in /etc/wireguard/privllm.key (0600) and its public key
# printed, to be given to the other side. The interface is named privllm0, port 51820.
set -euo pipefail
role="${1:?router or node}"; address="${2:?the tunnel address of this host}"; shift 2
umask 077
dir=/etc/wireguard
mkdir -p "$dir"
[ -f "$dir/privllm.key" ] || wg genkey > "$dir/privllm.key"
echo "public key of this host: $(wg pubkey < "$dir/privllm.key")"
{
    echo "[Interface]"
    echo "Address = $address/24"
    echo "ListenPort = 51820"
    echo "PostUp = wg set %i private-key $dir/privllm.key"
    for peer in "$@"; do
        IFS='=' read -r key tunnel endpoint <<< "$peer"
        echo
        echo "[Peer]"
        echo "PublicKey = $key"
        echo "AllowedIPs = $tunnel/32"
        echo "Endpoint = $endpoint:51820"
        [ "$role" = node ] && echo "PersistentKeepalive = 25"
    done
} > "$dir/privllm0.conf"
chmod 600 "$dir/privllm0.conf"
if ! modprobe wireguard 2>/dev/null; then
    export WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go
fi
systemctl enable --now wg-quick@privllm0
