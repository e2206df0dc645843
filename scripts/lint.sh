#!/usr/bin/env bash
# Usage: ./scripts/lint.sh
# Lint, format, strict types and import direction; fails on any finding.
# test.sh runs it first; run it alone before a commit (or use pre-commit).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CHAT_VENV:-.venv}"
status=0
run() {
    echo "== $*"
    "$VENV/bin/$@" || status=1
}
run ruff check .
run ruff format --check .
run mypy
run lint-imports
if [[ $status -ne 0 ]]; then
    echo "lint failed: fix the findings above (ruff check --fix . && ruff format . fixes most of them)" >&2
fi
exit $status
