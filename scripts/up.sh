#!/usr/bin/env bash
# Usage: ./scripts/up.sh [N]   (default 2)
# Installs what is missing (Debian redis-server and nginx, a .venv, Kafka's jars), starts
# Redis, Kafka, N chat servers and nginx, and returns once every server's /readyz is 200.
# Idempotent: what already runs is left alone, a server that died is started again.
source "$(dirname "$0")/lib.sh"

count="${1:-2}"
[[ "$count" =~ ^[1-9][0-9]?$ ]] || die "usage: $0 [N]   (N chat servers, 1-99; default 2)"
started=$SECONDS

ensure_system_packages
ensure_venv
check_java
check_ports "$count"
start_redis
start_kafka
serve_with "$count"

say "development mode (CHAT_DEV=1): dev login on, tokens signed with the secret in $RUN_DIR/secret"
say "logs in $LOGS; stop with ./scripts/down.sh ($((SECONDS - started))s)"
echo "chat is up: http://127.0.0.1:$NGINX_PORT"
