#!/usr/bin/env bash
# Redis-side cost of the fleet-wide breaker script beside the rate-limit take, interleaved
# (record, acquire, take) x 3 runs on a redis-server of its own (port 6455, stopped by pid).
# Why redis-benchmark: it measures the script on the server alone, without client noise.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d)
redis-server --port 6455 --save '' --appendonly no >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid; rm -rf "$dir"' EXIT
sleep 0.5
extract() { python3 -c "import re,sys; s=open(sys.argv[1]).read(); print(re.search(sys.argv[2]+r': &str = r\"(.*?)\";\n', s, re.S).group(1))" "$@"; }
F=$(redis-cli -p 6455 SCRIPT LOAD "$(extract "$here/src/store/redis/breaker.rs" FLEET_BREAKER_SCRIPT)")
T=$(redis-cli -p 6455 SCRIPT LOAD "$(extract "$here/src/store/redis.rs" TAKE_SCRIPT)")
cfg=(20 10 50 100 60000 30000 3 1)
for _ in $(seq 25); do redis-cli -p 6455 EVALSHA "$F" 2 'b{api}' 'w{api}' r 0 0 0 0 "${cfg[@]}" >/dev/null; done
for run in 1 2 3; do
  for op in r a; do
    echo -n "fleet $op run$run: "
    redis-benchmark -p 6455 -n 100000 -c 8 -q EVALSHA "$F" 2 'b{api}' 'w{api}' $op 0 0 0 0 "${cfg[@]}" | tr '\r' '\n' | tail -1 | sed 's/.*: //'
  done
  echo -n "take(3 windows) run$run: "
  redis-benchmark -p 6455 -n 100000 -c 8 -q EVALSHA "$T" 4 'e{api}' 'm{api}' 'h{api}' 'd{api}' \
    100000000 60000 100000000 3600000 100000000 86400000 | tr '\r' '\n' | tail -1 | sed 's/.*: //'
done
