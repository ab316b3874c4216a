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
# Lines touched: the same calls with callgrind simulating fully associative 4 KiB L1 caches
# (64 lines, least recently used out first), so small that nearly every cache line a call
# touches misses once per call, whatever the memory layout. A real call finds
# much of what the mesh touches gone from the core's private caches (the kernel, the
# transport and the server run in between), so these, more than instructions, track what
# the mesh costs end to end.
echo "| path | instructions per call | added to the transport | code lines touched, added | data lines touched, added | locked instructions, added |"
echo "|---|---|---|---|---|---|"
inner=0
inner_code=0
inner_data=0
inner_locked=0
# Locked instructions per call: the executions of every instruction objdump shows with a
# `lock` prefix, or an `xchg` with memory (locked without one). Each costs the core a wait
# for its store buffer to drain: about 10 ns apiece in a loop on one of this project's
# machines, where a plain load and store took 1 ns.
locked() {
  python3 - "$1" "$2" <<'PY'
import re, subprocess, sys
path, n = sys.argv[1], int(sys.argv[2])
disassembled = {}
def locks(obj):
    if obj not in disassembled:
        out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj],
                             capture_output=True, text=True).stdout
        disassembled[obj] = {int(m.group(1), 16) for m in re.finditer(
            r"^\s*([0-9a-f]+):\s+(?:lock |xchg\s+\S*\()", out, re.M)}
    return disassembled[obj]
total, current, call = 0, set(), False
for line in open(path):
    if line.startswith("ob="):
        current = locks(line[3:].strip())
    elif line.startswith("calls="):
        call = True  # the next cost line is the call's inclusive cost
    elif line.startswith("0x"):
        if call:
            call = False
            continue
        fields = line.split()
        if int(fields[0], 16) in current:
            total += int(fields[2])
print(f"{total / n:.1f}")
PY
}
n=$(( calls + 100 ))
# `waits` is the whole stack over a transport that answers on its second poll, as a real call
# does: what a call that waits adds (its deadline registered, the future polled again); it is
# measured against that transport alone, `inner_waits`.
for path in inner balance bare whole unique inner_waits waits; do
  # Counts only inside `counted`; its first, 100-call run warms up and is counted too.
  PROXYLESS_COUNT="$path:$calls" valgrind --tool=callgrind --toggle-collect='*stack::counted*' \
    --cache-sim=yes --I1=4096,64,64 --D1=4096,64,64 --LL=8388608,16,64 \
    --dump-instr=yes --compress-pos=no --compress-strings=no \
    --callgrind-out-file="$out/$path" "$bin" >/dev/null 2>&1
  # events: Ir Dr Dw I1mr D1mr D1mw ...
  read -r per code data < <(grep -m1 '^summary:' "$out/$path" |
    awk -v n="$n" '{printf "%d %d %d\n", $2 / n, $5 / n, ($6 + $7) / n}')
  locks=$(locked "$out/$path" "$n")
  if [ "$path" = inner ] || [ "$path" = inner_waits ]; then
    inner=$per
    inner_code=$code
    inner_data=$data
    inner_locked=$locks
  fi
  added_locks=$(python3 -c "print(f'{$locks - $inner_locked:.1f}')")
  echo "| $path | $per | $(( per - inner )) | $(( code - inner_code )) | $(( data - inner_data )) | $added_locks |"
done
# The size of what a call holds while it runs: each layer's future, in bytes.
echo
echo "| future | bytes |"
echo "|---|---|"
PROXYLESS_COUNT=sizes "$bin"
