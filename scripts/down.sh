#!/usr/bin/env bash
# Usage: ./scripts/down.sh
# Stops everything up.sh started (by the pid files in .run/pids), gracefully: nginx first,
# then the chat servers (they close sessions with 1001 and flush to Kafka), Kafka, Redis.
# Exit 0 when nothing runs any more.
source "$(dirname "$0")/lib.sh"

stop_pid nginx QUIT 10
for n in $(running_servers); do stop_pid "ws-$n" TERM 20; done
rm -f "$PIDS"/ws-*.pid
stop_pid kafka TERM 60
stop_pid redis TERM 20
say "everything up.sh started is stopped"
