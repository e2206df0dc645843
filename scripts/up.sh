#!/usr/bin/env bash
# Usage: ./scripts/up.sh [N]        (default 2)
#        ./scripts/up.sh --ha [N]   (default 3)
# Installs what is missing (Debian redis-server and nginx, a .venv, Kafka's jars), starts
# Redis, Kafka, N chat servers and nginx, and returns once every server's /readyz is 200.
# Idempotent: what already runs is left alone, a server that died is started again.
# --ha: a Redis Cluster (three masters with one replica each, REDIS_CLUSTER_PORTS, default
# 7000-7005) and three Kafka brokers (KAFKA_PORTS, default 9092-9094; topics replicated three
# times, min.insync.replicas=2) instead of one Redis and one broker.
if [[ "${1:-}" == --ha ]]; then
    export CHAT_HA=1
    shift
fi
source "$(dirname "$0")/lib.sh"

default=2
[[ "$CHAT_HA" == 1 ]] && default=3
count="${1:-$default}"
[[ "$count" =~ ^[1-9][0-9]?$ ]] || die "usage: $0 [--ha] [N]   (N chat servers, 1-99; default 2, or 3 with --ha)"
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
