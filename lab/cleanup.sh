#!/usr/bin/env bash
# Removes what lab runs that were SIGKILLed left behind (their Drop guard or EXIT trap never ran):
# namespaces named by crates/tundns/tests/common (td<pid>x<n>-c/-n) or lab/lib.sh
# (td<letter><pid>c/n) whose owning process is gone, the processes still inside them, their
# /etc/netns directories and their UAPI sockets. Labs of running processes are left alone.
set -euo pipefail

for ns in $(ip netns list | awk '{ print $1 }'); do
    if [[ $ns =~ ^(td([0-9]+)x[0-9]+)-[cn]$ ]] || [[ $ns =~ ^(td[a-z]([0-9]+))[cn]$ ]]; then
        lab_id=${BASH_REMATCH[1]} owner=${BASH_REMATCH[2]}
        kill -0 "$owner" 2>/dev/null && continue
        for pid in $(ip netns pids "$ns"); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns"
        rm -rf "/etc/netns/$ns"
        rm -f /var/run/wireguard/"$lab_id"?.sock
        rm -rf "/tmp/$lab_id" "/tmp/$lab_id".??????
        printf 'removed %s\n' "$ns"
    fi
done
