# Shared by up.sh, down.sh, scale.sh and test.sh: installing what is missing, starting and
# stopping each process by its pid file, waiting for readiness. Source it; don't run it.
#
# Everything this project starts records a pid file under $RUN_DIR/pids; stop_pid stops
# exactly those processes. A service found already listening (say, a Redis you run yourself)
# is used and never stopped.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$(realpath -m "${CHAT_RUN_DIR:-$ROOT/.run}")"  # absolute: nginx and Kafka take it from other folders
CACHE_DIR="${CHAT_CACHE_DIR:-$ROOT/.cache}"
VENV="${CHAT_VENV:-$ROOT/.venv}"
PIDS="$RUN_DIR/pids"
LOGS="$RUN_DIR/logs"

NGINX_PORT="${NGINX_PORT:-8080}"
CHAT_PORT_BASE="${CHAT_PORT_BASE:-8080}"   # ws-N listens on CHAT_PORT_BASE + N
REDIS_PORT="${REDIS_PORT:-6379}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20}"
# High availability (up.sh --ha, which sets CHAT_HA=1 before sourcing this): a Redis Cluster of
# six nodes (three masters, one replica each) and three Kafka brokers, each its own controller
# too, a quorum of three. Ports as lists, so that tests can pick free ones.
CHAT_HA="${CHAT_HA:-0}"
REDIS_CLUSTER_PORT="${REDIS_CLUSTER_PORT:-7000}"
REDIS_CLUSTER_PORTS="${REDIS_CLUSTER_PORTS:-$(seq -s ' ' "$REDIS_CLUSTER_PORT" $((REDIS_CLUSTER_PORT + 5)))}"
REDIS_CLUSTER_NODE_TIMEOUT_MS="${REDIS_CLUSTER_NODE_TIMEOUT_MS:-3000}"  # a silent master is failed over after this
KAFKA_PORTS="${KAFKA_PORTS:-$KAFKA_PORT $((KAFKA_PORT + 1)) $((KAFKA_PORT + 2))}"
KAFKA_CONTROLLER_PORTS="${KAFKA_CONTROLLER_PORTS:-$((KAFKA_PORT + 100)) $((KAFKA_PORT + 101)) $((KAFKA_PORT + 102))}"
if [[ "$CHAT_HA" == 1 ]]; then
    # Exported: the servers inherit them, and so do the scripts that chaos.py runs with their settings.
    export CHAT_HA REDIS_CLUSTER_PORTS KAFKA_PORTS KAFKA_CONTROLLER_PORTS
    KAFKA_REPLICATION="${KAFKA_REPLICATION:-3}"  # replicas of every topic
    KAFKA_MIN_INSYNC="${KAFKA_MIN_INSYNC:-2}"    # an acks=all write waits for this many of them
    export REDIS_URL="${REDIS_URL:-redis+cluster://$(for p in $REDIS_CLUSTER_PORTS; do printf '127.0.0.1:%s,' "$p"; done | sed 's/,$//')}"
    export KAFKA_BOOTSTRAP="${KAFKA_BOOTSTRAP:-$(for p in $KAFKA_PORTS; do printf '127.0.0.1:%s,' "$p"; done | sed 's/,$//')}"
else
    KAFKA_REPLICATION="${KAFKA_REPLICATION:-1}"
    KAFKA_MIN_INSYNC="${KAFKA_MIN_INSYNC:-1}"
fi
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}"
export KAFKA_BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:$KAFKA_PORT}"

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

mkdir -p "$PIDS" "$LOGS"

# ------------------------------------------------------------------------------ installing

_apt_updated=0
apt_install() {  # apt_install PACKAGE... : Debian packages, as root or through sudo
    local sudo=""
    command -v apt-get >/dev/null \
        || die "missing: $*, and there is no apt-get to install them: install them by hand (Debian names: $*) and run again"
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "missing: $*, and installing needs root or sudo: run 'apt-get install $*' as root, then again"
        sudo="sudo"
    fi
    if [[ $_apt_updated -eq 0 ]]; then
        say "installing $* (apt-get)..."
        $sudo apt-get update -qq >"$LOGS/apt.log" 2>&1 || die "apt-get update failed (no network?): see $LOGS/apt.log, or install $* by hand"
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" \
        >>"$LOGS/apt.log" 2>&1 || die "apt-get install $* failed: see $LOGS/apt.log, or install them by hand"
}

kafka_needed() { ! port_open "$KAFKA_PORT"; }  # a Kafka already listening is used, never started

ensure_system_packages() {  # redis-server, nginx and curl from Debian; java and mvn for Kafka
    local missing=()
    command -v curl >/dev/null || missing+=(curl)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-cli >/dev/null || missing+=(redis-tools)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    if [[ -z "${KAFKA_HOME:-}" ]] && kafka_needed; then
        command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
        command -v mvn >/dev/null || missing+=(maven)
    fi
    if [[ ${#missing[@]} -gt 0 ]]; then apt_install "${missing[@]}"; fi
    return 0
}

JAVA_MIN=17  # Kafka 4.x brokers need Java 17

java_major() {  # prints the major version of the java on PATH ("1.8.0_292" -> 8, "17.0.15" -> 17)
    local v
    v=$(java -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n 1)
    [[ "$v" == 1.* ]] && v=${v#1.}
    echo "${v%%[.+_-]*}"
}

check_java() {  # before Kafka is started: a java on PATH, new enough
    kafka_needed || return 0
    local fix="install openjdk-17-jre-headless (apt-get) or put a Java $JAVA_MIN+ first on PATH" major
    [[ -n "${KAFKA_HOME:-}" ]] && fix="$fix (KAFKA_HOME=$KAFKA_HOME needs one too)"
    command -v java >/dev/null || die "java not found: Kafka needs Java $JAVA_MIN or newer: $fix"
    major=$(java_major)
    [[ "$major" =~ ^[0-9]+$ ]] || die "cannot tell the version of $(command -v java) ('java -version' says: $(java -version 2>&1 | head -n 1)): Kafka needs Java $JAVA_MIN or newer: $fix"
    ((major >= JAVA_MIN)) || die "$(command -v java) is Java $major, too old: Kafka needs Java $JAVA_MIN or newer: $fix"
}

port_holder() {  # port_holder PORT : "NAME (pid PID)" of the process listening there, if it can be told
    local users
    if command -v ss >/dev/null; then
        users=$(ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 (pid \2)/p' | head -n 1)
        [[ -n "$users" ]] && { echo "$users"; return; }
    fi
    echo "another process"
}

check_port_free() {  # check_port_free PORT WHAT VARIABLE : dies naming the holder and the variable that moves it
    port_open "$1" || return 0
    die "port $1 ($2) is held by $(port_holder "$1"): stop it, or set $3 to move the port"
}

check_ports() {  # check_ports N : before anything starts, the ports of nginx and ws-1..ws-N are ours or free
    local count=$1 n
    pid_alive nginx || check_port_free "$NGINX_PORT" nginx NGINX_PORT
    for ((n = 1; n <= count; n++)); do
        pid_alive "ws-$n" || check_port_free "$(server_port "$n")" "ws-$n, CHAT_PORT_BASE+$n" CHAT_PORT_BASE
    done
}

nginx_bin() { command -v nginx || echo /usr/sbin/nginx; }

ensure_venv() {  # .venv with requirements.txt installed; reinstalls only when it changes
    local py="${PYTHON:-python3}" stamp="$VENV/.requirements.sha256" want
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$py is older than Python 3.11: set PYTHON to a newer interpreter"
    want=$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$VENV/bin/python" ]]; then return 0; fi
    say "installing Python packages into $VENV ..."
    [[ -x "$VENV/bin/python" ]] || "$py" -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/requirements.txt" \
        >"$LOGS/pip.log" 2>&1 || die "pip install failed: see $LOGS/pip.log"
    echo "$want" >"$stamp"
}

kafka_classpath() {  # prints the classpath of the broker: $KAFKA_HOME/libs or cached Maven jars
    if [[ -n "${KAFKA_HOME:-}" ]]; then
        [[ -d "$KAFKA_HOME/libs" ]] \
            || die "KAFKA_HOME=$KAFKA_HOME is not a Kafka installation (no libs/ folder): point it at an unpacked Kafka $KAFKA_VERSION, or unset it to fetch the jars with Maven"
        echo "$KAFKA_HOME/libs/*"
        return
    fi
    local libs="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
    if [[ ! -f "$libs/.complete" ]]; then
        say "downloading Apache Kafka $KAFKA_VERSION jars from Maven Central (once) ..."
        rm -rf "$libs"
        mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
            dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs" \
            >"$LOGS/maven.log" 2>&1 \
            || die "Maven could not fetch the Kafka $KAFKA_VERSION jars (no network to Maven Central?): see $LOGS/maven.log; or set KAFKA_HOME to an unpacked Kafka $KAFKA_VERSION"
        touch "$libs/.complete"
    fi
    echo "$libs/*"
}

# ------------------------------------------------------------------------------ processes

pid_running() {  # pid_running PID : alive and not a zombie (an orphan that init has not reaped)
    local state
    state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

pid_alive() {  # pid_alive NAME : the process recorded in $PIDS/NAME.pid is running
    local f="$PIDS/$1.pid"
    [[ -f "$f" ]] && pid_running "$(cat "$f")"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND... : poll COMMAND every 0.2 s
    local seconds=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + seconds))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

stop_pid() {  # stop_pid NAME [SIGNAL] [SECONDS] : signal the recorded process, wait, then KILL
    local name=$1 sig=${2:-TERM} seconds=${3:-20} f="$PIDS/$1.pid" pid
    [[ -f "$f" ]] || return 0
    pid=$(cat "$f")
    if pid_running "$pid"; then
        kill -s "$sig" "$pid" 2>/dev/null || true
        if ! wait_for "$seconds" "$name to stop" bash -c "! { sed 's/^.*) //' /proc/$pid/stat 2>/dev/null | grep -qv '^[ZX]'; }"; then
            say "$name (pid $pid) did not stop within ${seconds}s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped $name (pid $pid)"
    fi
    rm -f "$f"
}

start_redis() {
    if [[ "$CHAT_HA" == 1 ]]; then start_redis_cluster; return; fi
    if port_open "$REDIS_PORT"; then return 0; fi
    mkdir -p "$RUN_DIR/redis"
    # Append-only file, fsync every second: history and offsets survive a restart (a crash
    # of Redis itself can lose the last second). Registry entries are rebuilt by heartbeats.
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$RUN_DIR/redis" \
        --appendonly yes --appendfsync everysec --save "" --daemonize no --protected-mode yes \
        >>"$LOGS/redis.log" 2>&1 &
    echo $! >"$PIDS/redis.pid"
    if ! wait_for 15 redis redis_up_or_dead || ! pid_alive redis; then
        say "last lines of $LOGS/redis.log:"
        tail -n 10 "$LOGS/redis.log" >&2 || true
        pid_alive redis && die "Redis does not answer on port $REDIS_PORT after 15s: see the lines above"
        die "Redis exited at start: see the lines above ($LOGS/redis.log); set REDIS_PORT to move its port"
    fi
    say "redis on 127.0.0.1:$REDIS_PORT"
}

redis_up_or_dead() { redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 || ! pid_alive redis; }

kafka_up_or_dead() { port_open "$KAFKA_PORT" || ! pid_alive kafka; }

redis_replica_linked() {  # a master, or a replica whose link to its master is up
    local info
    info=$(redis-cli -p "$1" info replication 2>/dev/null) || return 1
    grep -q '^role:master' <<<"$info" || grep -q '^master_link_status:up' <<<"$info"
}

redis_cluster_ok() { redis-cli -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }

start_redis_cluster() {  # six nodes on REDIS_CLUSTER_PORTS: three masters with one replica each
    local port nodes=() first
    read -r -a nodes <<<"$REDIS_CLUSTER_PORTS"
    [[ ${#nodes[@]} -eq 6 ]] || die "REDIS_CLUSTER_PORTS needs six ports, not '$REDIS_CLUSTER_PORTS'"
    first=${nodes[0]}
    for port in "${nodes[@]}"; do
        pid_alive "redis-$port" && continue
        port_open "$port" && die "port $port for the Redis Cluster is taken by another process: set REDIS_CLUSTER_PORTS"
        mkdir -p "$RUN_DIR/redis-cluster/$port"
        # As start_redis (append-only, fsync every second), and a cluster node: its view of the
        # cluster is kept in nodes.conf, so a node that restarts rejoins as what it was.
        redis-server --bind 127.0.0.1 --port "$port" --dir "$RUN_DIR/redis-cluster/$port" \
            --cluster-enabled yes --cluster-config-file nodes.conf \
            --cluster-node-timeout "$REDIS_CLUSTER_NODE_TIMEOUT_MS" \
            --appendonly yes --appendfsync everysec --save "" --daemonize no --protected-mode yes \
            >>"$LOGS/redis-$port.log" 2>&1 &
        echo $! >"$PIDS/redis-$port.pid"
    done
    for port in "${nodes[@]}"; do
        wait_for 15 "redis-$port" bash -c "redis-cli -p $port ping >/dev/null 2>&1" \
            || die "redis did not start on port $port: see $LOGS/redis-$port.log"
    done
    if ! redis_cluster_ok "$first" && redis-cli -p "$first" cluster info | grep -q '^cluster_known_nodes:1'; then
        redis-cli --cluster create $(printf '127.0.0.1:%s ' "${nodes[@]}") --cluster-replicas 1 --cluster-yes \
            >>"$LOGS/redis-cluster.log" 2>&1 || die "forming the Redis Cluster failed: see $LOGS/redis-cluster.log"
    fi
    for port in "${nodes[@]}"; do
        wait_for 60 "redis-$port in the cluster" redis_cluster_ok "$port" \
            || die "the Redis Cluster is not ok on port $port: see $LOGS/redis-$port.log and $LOGS/redis-cluster.log"
    done
    for port in "${nodes[@]}"; do  # and each replica in step with its master (stores wait for one)
        wait_for 60 "redis-$port replicating" redis_replica_linked "$port" \
            || die "the replica on port $port does not replicate its master: see $LOGS/redis-$port.log"
    done
    say "redis cluster on 127.0.0.1:${REDIS_CLUSTER_PORTS// /,} (three masters, one replica each)"
}

kafka_properties() {  # kafka_properties NODE_ID BROKER_PORT CONTROLLER_PORT VOTERS DIR : server.properties
    local replication=$KAFKA_REPLICATION min_insync=$KAFKA_MIN_INSYNC
    cat <<EOF
# Generated by scripts/lib.sh: a KRaft broker and controller on loopback.
process.roles=broker,controller
node.id=$1
controller.quorum.voters=$4
listeners=PLAINTEXT://127.0.0.1:$2,CONTROLLER://127.0.0.1:$3
advertised.listeners=PLAINTEXT://127.0.0.1:$2
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$5/data
num.partitions=1
default.replication.factor=$replication
min.insync.replicas=$min_insync
offsets.topic.replication.factor=$replication
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=$min_insync
share.coordinator.state.topic.replication.factor=$replication
share.coordinator.state.topic.min.isr=$min_insync
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
log.retention.hours=24
num.network.threads=2
num.io.threads=2
EOF
    if ((replication > 1)); then  # a dead broker's partitions get new leaders in seconds, not 9 s
        printf '%s\n' broker.session.timeout.ms=4000 broker.heartbeat.interval.ms=1000
    fi
}

format_kafka_node() {  # format_kafka_node NAME NODE_ID BROKER_PORT CONTROLLER_PORT VOTERS CLUSTER_ID CLASSPATH
    local name=$1 dir="$RUN_DIR/$1"
    mkdir -p "$dir/data"
    kafka_properties "$2" "$3" "$4" "$5" "$dir" >"$dir/server.properties"
    if [[ ! -f "$dir/data/meta.properties" ]]; then
        java -cp "$7" kafka.tools.StorageTool format -t "$6" -c "$dir/server.properties" \
            >>"$LOGS/$name.log" 2>&1 || die "formatting Kafka storage in $dir/data failed: see $LOGS/$name.log"
    fi
}

start_kafka_node() {  # start_kafka_node NAME CLASSPATH : the broker formatted by format_kafka_node
    local name=$1
    # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS and KAFKA_JVM_OPTS hold several options
    java $KAFKA_HEAP_OPTS $KAFKA_JVM_OPTS -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.yaml" \
        -cp "$2" kafka.Kafka "$RUN_DIR/$name/server.properties" >>"$LOGS/$name.log" 2>&1 &
    echo $! >"$PIDS/$name.pid"
}

kafka_cluster_id() {  # made once per run folder: 16 random bytes, base64url (as StorageTool random-uuid)
    local f="$RUN_DIR/kafka-cluster.id" id=-
    if [[ ! -s "$f" ]]; then
        # Never one that starts with '-', as Kafka's own Uuid.randomUuid: StorageTool would read it as an option.
        while [[ $id == -* ]]; do id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'); done
        printf '%s' "$id" >"$f"
    fi
    cat "$f"
}

start_kafka() {
    if [[ "$CHAT_HA" == 1 ]]; then start_kafka_ha; return; fi
    if port_open "$KAFKA_PORT"; then return 0; fi
    local cp
    cp=$(kafka_classpath)
    format_kafka_node kafka 1 "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "1@127.0.0.1:$KAFKA_CONTROLLER_PORT" \
        "$(kafka_cluster_id)" "$cp"
    start_kafka_node kafka "$cp"
    if ! wait_for 90 kafka kafka_up_or_dead || ! pid_alive kafka; then
        local why="is not listening on port $KAFKA_PORT after 90s"
        pid_alive kafka || why="exited at start"
        say "last lines of $LOGS/kafka.log:"
        tail -n 15 "$LOGS/kafka.log" >&2 || true
        die "Kafka $why: see the lines above ($LOGS/kafka.log); is port $KAFKA_CONTROLLER_PORT (KAFKA_CONTROLLER_PORT) free?"
    fi
    say "kafka on 127.0.0.1:$KAFKA_PORT (KRaft, pid $(cat "$PIDS/kafka.pid"))"
}

start_kafka_ha() {  # three brokers, each a controller too: a quorum of three voters
    local brokers controllers voters="" cp id i
    read -r -a brokers <<<"$KAFKA_PORTS"
    read -r -a controllers <<<"$KAFKA_CONTROLLER_PORTS"
    [[ ${#brokers[@]} -eq 3 && ${#controllers[@]} -eq 3 ]] || die "KAFKA_PORTS and KAFKA_CONTROLLER_PORTS need three ports each"
    for i in 1 2 3; do voters+="${voters:+,}$i@127.0.0.1:${controllers[i - 1]}"; done
    cp=$(kafka_classpath)
    id=$(kafka_cluster_id)
    local start=()
    for i in 1 2 3; do
        pid_alive "kafka-$i" && continue
        port_open "${brokers[i - 1]}" && die "port ${brokers[i - 1]} for kafka-$i is taken by another process: set KAFKA_PORTS"
        start+=("$i")
    done
    local formatting=()
    for i in "${start[@]}"; do  # formatting is a JVM each: the three at once
        format_kafka_node "kafka-$i" "$i" "${brokers[i - 1]}" "${controllers[i - 1]}" "$voters" "$id" "$cp" &
        formatting+=($!)
    done
    [[ ${#formatting[@]} -eq 0 ]] || wait "${formatting[@]}" || true  # not a bare wait: Redis runs in the background too
    for i in "${start[@]}"; do
        [[ -f "$RUN_DIR/kafka-$i/data/meta.properties" ]] || die "formatting kafka-$i failed: see $LOGS/kafka-$i.log"
        start_kafka_node "kafka-$i" "$cp"
    done
    for i in 1 2 3; do
        wait_for 120 "kafka-$i" port_open "${brokers[i - 1]}" \
            || die "kafka-$i did not start on port ${brokers[i - 1]}: see $LOGS/kafka-$i.log"
    done
    say "kafka on 127.0.0.1:${KAFKA_PORTS// /,} (three KRaft brokers, replication $KAFKA_REPLICATION, min ISR $KAFKA_MIN_INSYNC)"
}

dev_secret() {  # a random secret, made once per run folder, shared by every server
    local f="$RUN_DIR/secret"
    [[ -s "$f" ]] || (umask 077 && head -c 32 /dev/urandom | base64 | tr -d '\n=' >"$f")
    cat "$f"
}

server_port() { echo $((CHAT_PORT_BASE + $1)); }

start_server() {  # start_server N : chat server ws-N, unless it runs already
    local n=$1 name="ws-$1" secret
    if pid_alive "$name"; then return 0; fi
    check_port_free "$(server_port "$n")" "$name, CHAT_PORT_BASE+$n" CHAT_PORT_BASE
    secret=$(dev_secret)  # here, not in the background command: servers must share one
    SERVER_ID="$name" PORT="$(server_port "$n")" CHAT_DEV=1 CHAT_SECRET="$secret" \
        PYTHONUNBUFFERED=1 "$VENV/bin/python" -m chatserver >>"$LOGS/$name.log" 2>&1 &
    echo $! >"$PIDS/$name.pid"
    say "started $name on 127.0.0.1:$(server_port "$n") (pid $!)"
}

server_ready() { curl -sf -o /dev/null "http://127.0.0.1:$(server_port "$1")/readyz"; }

server_ready_or_dead() {  # true when ws-N is ready, or has exited (checked by the caller)
    server_ready "$1" || ! pid_alive "ws-$1"
}

wait_servers_ready() {  # wait_servers_ready N...
    local n
    for n in "$@"; do
        if ! wait_for 90 "ws-$n ready" server_ready_or_dead "$n" || ! pid_alive "ws-$n"; then
            if pid_alive "ws-$n"; then
                say "ws-$n is not ready after 90s: $(curl -s "http://127.0.0.1:$(server_port "$n")/readyz" || echo 'no answer')"
            else
                say "ws-$n exited during startup"
            fi
            say "last lines of $LOGS/ws-$n.log:"
            tail -n 15 "$LOGS/ws-$n.log" >&2 || true
            exit 1
        fi
    done
}

running_servers() {  # the numbers N of the ws-N that run, ascending
    local f n
    for f in "$PIDS"/ws-*.pid; do
        [[ -e "$f" ]] || continue
        n=${f##*/ws-}
        n=${n%.pid}
        pid_alive "ws-$n" && echo "$n"
    done | sort -n
}

serve_with() {  # serve_with N : ws-1..ws-N running (starting those that are not), ready, behind nginx
    local count=$1 n servers=()
    for ((n = 1; n <= count; n++)); do
        start_server "$n"
        servers+=("$n")
    done
    wait_servers_ready "${servers[@]}"
    start_or_reload_nginx "${servers[@]}"
}

write_nginx_conf() {  # write_nginx_conf N... : nginx.conf and an upstream of those servers
    local dir="$RUN_DIR/nginx" n
    mkdir -p "$dir"
    sed "s/^\(\s*\)listen 8080;.*/\1listen 127.0.0.1:$NGINX_PORT;/" "$ROOT/nginx.conf" >"$dir/nginx.conf"
    {
        echo "# Generated by scripts/lib.sh from the running chat servers."
        for n in "$@"; do echo "server 127.0.0.1:$(server_port "$n") max_fails=1 fail_timeout=2s;"; done
    } >"$dir/upstream.conf.new"
    mv "$dir/upstream.conf.new" "$dir/upstream.conf"
}

check_nginx_conf() {  # nginx -t of what write_nginx_conf wrote; dies saying where to look
    local dir="$RUN_DIR/nginx"
    "$(nginx_bin)" -t -q -p "$dir/" -c "$dir/nginx.conf" 2>>"$LOGS/nginx.log" \
        || die "nginx rejects its configuration: see $LOGS/nginx.log"
}
start_or_reload_nginx() {  # start_or_reload_nginx N... : nginx in front of those servers
    local dir="$RUN_DIR/nginx" bin
    bin=$(nginx_bin)
    write_nginx_conf "$@"
    check_nginx_conf
    if pid_alive nginx; then
        "$bin" -p "$dir/" -c "$dir/nginx.conf" -s reload 2>>"$LOGS/nginx.log" || die "nginx reload failed: see $LOGS/nginx.log"
        say "nginx reloaded: upstream ws-$(echo "$@" | sed 's/ /, ws-/g')"
        return 0
    fi
    check_port_free "$NGINX_PORT" nginx NGINX_PORT
    "$bin" -p "$dir/" -c "$dir/nginx.conf" -g "daemon off;" >>"$LOGS/nginx.log" 2>&1 &
    echo $! >"$PIDS/nginx.pid"
    wait_for 15 nginx port_open "$NGINX_PORT" || die "nginx did not start: see $LOGS/nginx.log"
    say "nginx on 127.0.0.1:$NGINX_PORT"
}
