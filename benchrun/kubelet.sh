#!/bin/bash
cd /work/wt/lead
git merge -q --ff-only main
cargo build --release -p kubeshard-benches --bin pod_startup --bin kubelet_idle > benchrun/build.log 2>&1 || exit 1
export TMPDIR=/work/wt/lead/benchrun
for i in 1 2 3; do
  { date -u; uptime; } > benchrun/start$i.out
  timeout 400 ./target/release/pod_startup >> benchrun/start$i.out 2> benchrun/start$i.err
  uptime >> benchrun/start$i.out
done
{ date -u; uptime; } > benchrun/idle1.out
timeout 300 ./target/release/kubelet_idle --pods 110 --seconds 60 --settle 10 >> benchrun/idle1.out 2> benchrun/idle1.err
uptime >> benchrun/idle1.out
echo done > benchrun/done
