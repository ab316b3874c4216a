#!/usr/bin/env bash
# Instructions per call through each path of the stack, over a transport that does no I/O,
# counted by callgrind: exact and repeatable where wall-clock timings on a shared machine are
# not. Installs valgrind from Debian if it is missing (as root).
# Usage: benches/instructions.sh [calls]   (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
calls="${1:-2000}"
if ! command -v valgrind >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends valgrind
fi
bin=$(cargo bench --all-features --bench mesh --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "mesh" and m.get("executable"):
        print(m["executable"])')
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "| path | instructions per call | added to the transport |"
echo "|---|---|---|"
inner=0
for path in inner balance bare whole; do
  # Counts only inside `counted`; its first, 100-call run warms up and is counted too.
  PROXYLESS_COUNT="$path:$calls" valgrind --tool=callgrind --toggle-collect='*stack::counted*' \
    --callgrind-out-file="$out/$path" "$bin" >/dev/null 2>&1
  total=$(grep -m1 '^totals:\|^summary:' "$out/$path" | awk '{print $2}')
  per=$(( total / (calls + 100) ))
  [ "$path" = inner ] && inner=$per
  echo "| $path | $per | $(( per - inner )) |"
done
