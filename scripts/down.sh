#!/usr/bin/env bash
# Usage: ./scripts/down.sh
# Stops everything up.sh started (by the pid files in .run/pids), gracefully: nginx first,
# then the chat servers (they close sessions with 1001 and flush to Kafka), Kafka, Redis
# (one broker and one Redis, or the three brokers and the Redis Cluster of up.sh --ha).
# Exit 0 when nothing runs any more.
source "$(dirname "$0")/lib.sh"

pid_names() {  # pid_names PATTERN : the names of the pid files matching PATTERN
    local f
    for f in "$PIDS"/$1.pid; do [[ -e "$f" ]] && basename "$f" .pid; done
    return 0
}

stop_pid nginx QUIT 10
for n in $(running_servers); do stop_pid "ws-$n" TERM 20; done
rm -f "$PIDS"/ws-*.pid
# All brokers at once: one stopped after the others would wait for a quorum that is gone.
for name in $(pid_names 'kafka*'); do stop_pid "$name" TERM 60 & done
wait
for name in $(pid_names 'redis*'); do stop_pid "$name" TERM 20 & done
wait
say "everything up.sh started is stopped"
