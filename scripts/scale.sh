#!/usr/bin/env bash
# Usage: ./scripts/scale.sh N
# Grows or shrinks the running cluster to N chat servers (ws-1..ws-N). New servers start,
# become ready, then join nginx's upstream; removed servers leave the upstream first, then
# stop gracefully (their clients are closed with 1001 and reconnect to the others).
source "$(dirname "$0")/lib.sh"

count="${1:-}"
[[ "$count" =~ ^[1-9][0-9]?$ ]] || die "usage: $0 N   (N chat servers, 1-99)"
pid_alive nginx || die "the cluster is not running: start it with ./scripts/up.sh $count"
ensure_venv
check_java
check_ports "$count"
start_redis
start_kafka

serve_with "$count"
for n in $(running_servers); do
    if ((n > count)); then stop_pid "ws-$n" TERM 20; fi
done
echo "scaled to $count chat server(s): ws-1..ws-$count behind http://127.0.0.1:$NGINX_PORT"
