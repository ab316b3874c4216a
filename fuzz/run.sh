#!/usr/bin/env bash
# Fuzzes every parser of outside bytes with libFuzzer (libfuzzer-sys), on stable Rust: the
# coverage instrumentation cargo-fuzz asks of nightly's sanitizers is the stable
# `-Cpasses=sancov-module` pass with its LLVM options, and no sanitizer is needed for safe
# Rust (the crate forbids unsafe code; a panic is the finding).
#
#   fuzz/run.sh [RUNS] [TARGET...]   RUNS executions per target (1000000 unless given)
#
# Each target starts from its seeds in fuzz/seeds/<target>, grows a corpus in
# fuzz/corpus/<target> (not committed), and prints libFuzzer's final stats. A crash leaves
# its input in fuzz/artifacts/<target>/: make it a regression test, then fix.
set -euo pipefail
cd "$(dirname "$0")"
runs=${1:-1000000}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(consul_health eureka_application dns_message retry_after config logical_url jwks token oidc_document token_response xds_resource)
fi
export RUSTFLAGS="-Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR=target/instrumented
# With an explicit target the flags reach the fuzzed code only, not build scripts and proc
# macros (which would then need libFuzzer's hooks to link).
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --bins --target "$host"
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  echo "== $target: $runs runs"
  start=$(date +%s)
  "$CARGO_TARGET_DIR/$host/release/$target" \
    -runs="$runs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="artifacts/$target/" \
    "corpus/$target" "seeds/$target" 2>&1 | grep -E "^(stat::|Done|INFO: Seed|==.*ERROR|SUMMARY)|panicked" || true
  echo "   $(( $(date +%s) - start )) s; corpus: $(ls "corpus/$target" | wc -l) inputs"
done
