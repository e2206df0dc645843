#!/usr/bin/env bash
# Usage: ./scripts/test.sh [pytest arguments]
# The whole suite, as CI runs it: installs what is missing, checks lint/types/imports, starts
# Redis and Kafka if they are not running (and stops what it started), then runs pytest:
# units, in-process servers, the real stack (server processes, nginx, the scripts, a browser).
# Test infrastructure lives in .run/test, apart from a cluster that up.sh runs.
export CHAT_RUN_DIR="${CHAT_RUN_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.run/test}"
source "$(dirname "$0")/lib.sh"

started=$SECONDS
ensure_system_packages
ensure_venv
check_java
"$ROOT/scripts/ensure-chromium.sh"  # Debian's Chromium for the browser tests
"$ROOT/scripts/lint.sh"

cleanup() {
    stop_pid kafka TERM 60 2>/dev/null || true
    stop_pid redis TERM 20 2>/dev/null || true
}
trap cleanup EXIT
start_redis
start_kafka

say "running pytest (setup took $((SECONDS - started))s)"
cd "$ROOT"
"$VENV/bin/python" -m pytest "$@"
