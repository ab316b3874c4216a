#!/usr/bin/env bash
# The end-to-end overhead benchmark, with haproxy as the local proxy hop it compares against.
# Installs haproxy from Debian if it is missing (as root), then runs the benchmark; arguments
# go to it (--samples N, --rounds R of closed-loop windows of --throughput-secs S, --resamples B).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends haproxy
fi
# The package starts a system haproxy on port 80; the benchmark runs its own.
/usr/sbin/haproxy -v | head -n 1
cargo bench --all-features --bench overhead -- "$@"
