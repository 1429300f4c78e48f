#!/bin/bash
# The peer for the `podnet` bench binary: the upstream CNI bridge plugin (Debian's
# containernetworking-plugins: bridge + host-local IPAM), ADD then DEL of one pod's network,
# in network namespaces of its own (a "host" and a pod), removed at the end. Prints p50/p99.
# Needs root: apt-get install containernetworking-plugins; bash benches/scripts/podnet_cni_peer.sh [N]
set -euo pipefail
N=${1:-110}
D=$(mktemp -d)
H=kscni-h-$$; P=kscni-p-$$
cleanup() { ip netns del "$P" 2>/dev/null || true; ip netns del "$H" 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
cat > "$D/conf.json" <<JSON
{"cniVersion":"1.0.0","name":"bench","type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"mtu":1500,
 "ipam":{"type":"host-local","subnet":"10.244.1.0/24","dataDir":"$D/ipam"}}
JSON
ip netns add "$H"; ip netns add "$P"; ip -n "$H" link set lo up
ip netns exec "$H" bash -c '
  export CNI_PATH=/usr/lib/cni CNI_IFNAME=eth0 CNI_NETNS=/run/netns/'"$P"'
  for i in $(seq 1 '"$N"'); do
    export CNI_CONTAINERID=c$i
    t0=$(date +%s%N); CNI_COMMAND=ADD /usr/lib/cni/bridge < '"$D"'/conf.json >/dev/null
    t1=$(date +%s%N); CNI_COMMAND=DEL /usr/lib/cni/bridge < '"$D"'/conf.json >/dev/null
    t2=$(date +%s%N); echo $((t1-t0)) $((t2-t1)) $((t2-t0))
  done' > "$D/out.txt"
python3 - "$D/out.txt" <<'PY'
import sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l[:1].isdigit()][10:]
for i, name in enumerate(["setup", "teardown", "setup+teardown"]):
    v = sorted(r[i] for r in rows); n = len(v)
    print(f"cni bridge {name} ({n} runs): p50 {v[n//2]/1e6:.2f} ms, p99 {v[min(n-1, round((n-1)*0.99))]/1e6:.2f} ms")
PY
