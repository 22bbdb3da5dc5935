#!/usr/bin/env bash
# Local services for imaged: RabbitMQ, a MongoDB-compatible server and an S3-compatible server
# (SeaweedFS), on 127.0.0.1 only.
#
# Usage: deploy/local/services.sh [up|down|status|restart-rabbitmq|restart-mongo|restart-s3|help]
#
#   up                (default) install or build what is missing, start what is not running, wait
#                     until each server answers a real protocol request (for S3: a signed
#                     ListBuckets; the bucket "imaged" is created if missing), then print on stdout:
#                       amqp: amqp://guest:guest@127.0.0.1:5672/
#                       mongodb: mongodb://127.0.0.1:27017
#                       s3: http://127.0.0.1:8333
#                     Idempotent and fast when everything is already up.
#   down              stop the servers this script started (never a server it merely reused)
#   status            print each server's state and URL, and the settings an S3 client needs;
#                     exit 1 if any is down
#   restart-rabbitmq  stop then start RabbitMQ (same data), wait for the handshake
#   restart-mongo     stop then start the MongoDB-compatible server (same data), wait for the handshake
#   restart-s3        stop then start SeaweedFS (same data; rebuilt first if its pin changed), wait
#                     for a signed S3 request
#
# S3 clients: endpoint http://127.0.0.1:8333, region us-east-1, access key id "imaged", secret
# "imaged-local-secret", bucket "imaged", path-style addressing (`status` prints them as env vars).
#
# Environment:
#   IMAGED_LOCAL_AMQP_PORT       AMQP port (default 5672)
#   IMAGED_LOCAL_AMQP_DIST_PORT  Erlang distribution port (default AMQP port + 20000)
#   IMAGED_LOCAL_RABBITMQ_NODE   Erlang node name (default imaged-<AMQP port>@localhost)
#   IMAGED_LOCAL_MONGO_PORT      MongoDB port (default 27017)
#   IMAGED_LOCAL_MONGO           "mongod" or "ferretdb" (default: mongod if on PATH, else ferretdb)
#   IMAGED_LOCAL_S3              "1" (default) or "0": whether `up` starts the S3 server (the first
#                                start builds it: 5 to 8 minutes and up to 2.6 GB of memory on 2 cores)
#   IMAGED_LOCAL_S3_PORT         S3 port (default 8333)
#   IMAGED_LOCAL_S3_INTERNAL_PORT  first of the 4 ports of SeaweedFS's master, volume, filer and admin
#                                servers (default S3 port + 1000); each of these and the S3 server
#                                also listens on its port + 10000 for gRPC
#   IMAGED_LOCAL_WAIT_S          how long to wait for a handshake (default 90)
#   PYTHON                       interpreter for ready.py (default .venv/bin/python, else python3)
#
# All state (data, logs, config, pid files, Erlang cookie, the FerretDB and SeaweedFS binaries)
# lives in the repository's ignored folder .state/. Progress messages go to stderr; only URLs go to
# stdout.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd -- "$SCRIPT_DIR/../.." && pwd -P)
STATE=$REPO/.state

HOST=127.0.0.1
AMQP_PORT=${IMAGED_LOCAL_AMQP_PORT:-5672}
AMQP_DIST_PORT=${IMAGED_LOCAL_AMQP_DIST_PORT:-$((AMQP_PORT + 20000))}
MONGO_PORT=${IMAGED_LOCAL_MONGO_PORT:-27017}
S3_ENABLED=${IMAGED_LOCAL_S3:-1}
S3_PORT=${IMAGED_LOCAL_S3_PORT:-8333}
WAIT_S=${IMAGED_LOCAL_WAIT_S:-90}
AMQP_URL="amqp://guest:guest@$HOST:$AMQP_PORT/"
MONGO_URL="mongodb://$HOST:$MONGO_PORT"
S3_URL="http://$HOST:$S3_PORT"
# Static, local-only credentials (SeaweedFS reads them from the s3 config written on every start).
S3_ACCESS_KEY=imaged
S3_SECRET_KEY=imaged-local-secret
S3_REGION=us-east-1 # SeaweedFS accepts any region in a signature; clients still need one
S3_BUCKET=imaged

if [[ -n ${PYTHON:-} ]]; then
    :
elif [[ -x $REPO/.venv/bin/python ]]; then
    PYTHON=$REPO/.venv/bin/python
else
    PYTHON=python3
fi
READY=("$PYTHON" "$SCRIPT_DIR/ready.py")

# RabbitMQ
RMQ_DIR=$STATE/rabbitmq
RMQ_NODE=${IMAGED_LOCAL_RABBITMQ_NODE:-imaged-$AMQP_PORT@localhost}
RMQ_PIDFILE=$RMQ_DIR/rabbitmq.pid
RMQ_LOG=$RMQ_DIR/log/$RMQ_NODE.log
RMQ_STARTUP_LOG=$RMQ_DIR/log/startup.log

# MongoDB-compatible server
FDB_MODULE_DIR=$SCRIPT_DIR/ferretdb
FDB_PKG=github.com/FerretDB/FerretDB/cmd/ferretdb
FDB_BIN=$STATE/bin/ferretdb
FDB_DIR=$STATE/ferretdb
FDB_DATA=$FDB_DIR/data
FDB_LOG=$FDB_DIR/ferretdb.log
FDB_PIDFILE=$FDB_DIR/ferretdb.pid
MONGOD_DIR=$STATE/mongod
MONGOD_DATA=$MONGOD_DIR/data
MONGOD_LOG=$MONGOD_DIR/mongod.log
MONGOD_PIDFILE=$MONGOD_DIR/mongod.pid

# S3-compatible server: SeaweedFS (`weed mini`: master, volume, filer, S3 and admin in one process)
SW_MODULE_DIR=$SCRIPT_DIR/seaweedfs
SW_PKG=github.com/seaweedfs/seaweedfs/weed
SW_BIN=$STATE/bin/weed
SW_DIR=$STATE/seaweedfs
SW_DATA=$SW_DIR/data
SW_LOG=$SW_DIR/weed.log
SW_PIDFILE=$SW_DIR/weed.pid
SW_S3_CONFIG=$SW_DIR/s3.json

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

show_log_tail() { # file
    if [[ -s $1 ]]; then
        printf -- '----- last lines of %s -----\n' "$1" >&2
        tail -n 40 -- "$1" >&2 || true
        printf -- '-----\n' >&2
    fi
}

ms_now() { date +%s%3N; }

# ---------------------------------------------------------------------------------------------
# Process helpers. A pid file is trusted only if the process is alive and is really ours
# (stale pid files from a previous session or a reused pid are ignored and removed).

pid_alive() { # pid
    [[ $1 =~ ^[0-9]+$ ]] || return 1
    kill -0 "$1" 2>/dev/null || return 1
    if [[ -r /proc/$1/stat ]]; then
        local stat
        stat=$(<"/proc/$1/stat") || return 1
        stat=${stat##*) }
        [[ ${stat%% *} != Z ]] || return 1
    fi
    return 0
}

proc_cmdline() { # pid
    if [[ -r /proc/$1/cmdline ]]; then
        tr '\0' ' ' <"/proc/$1/cmdline"
    else
        ps -ww -o command= -p "$1" 2>/dev/null || true
    fi
}

# is_ours KIND PID: does PID belong to the server of KIND that this script started?
is_ours() {
    local kind=$1 pid=$2
    pid_alive "$pid" || return 1
    case $kind in
        rabbitmq)
            # The node runs with its working directory in our state folder.
            local cwd
            if [[ -e /proc/$pid/cwd ]]; then
                cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
                [[ $cwd == "$RMQ_DIR" ]]
            else
                [[ $(proc_cmdline "$pid") == *beam* ]]
            fi
            ;;
        ferretdb) [[ $(proc_cmdline "$pid") == *"--sqlite-url=file:$FDB_DATA/"* ]] ;;
        mongod) [[ $(proc_cmdline "$pid") == *"--dbpath $MONGOD_DATA"* ]] ;;
        seaweedfs) [[ $(proc_cmdline "$pid") == *" mini "*"-dir=$SW_DATA "* ]] ;;
        *) return 1 ;;
    esac
}

# our_pid KIND PIDFILE: print the pid if the pid file names our live server; drop stale files.
our_pid() {
    local kind=$1 pidfile=$2 pid
    [[ -f $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)
    if [[ -n $pid ]] && is_ours "$kind" "$pid"; then
        printf '%s\n' "$pid"
        return 0
    fi
    rm -f -- "$pidfile"
    return 1
}

stop_pid() { # name pid
    local name=$1 pid=$2 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 600; i++)); do # up to 60 s
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    log "$name (pid $pid) did not stop within 60 s after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    die "could not stop $name (pid $pid)"
}

# probe KIND PORT [ready.py options...]: 0 ready, 1 nothing there, 2 wrong protocol, 3 pid died
probe() {
    local kind=$1 port=$2
    shift 2
    local rc=0
    "${READY[@]}" "$kind" "$HOST" "$port" "$@" || rc=$?
    return "$rc"
}

port_listeners() { # port -> "addr:port" lines of listening sockets (best effort)
    command -v ss >/dev/null 2>&1 || return 0
    ss -Hltn "sport = :$1" 2>/dev/null | awk '{print $4}' || true
}

warn_if_not_loopback() { # name port
    local addr
    for addr in $(port_listeners "$2"); do
        case $addr in
            127.*:* | "[::1]:"* | "[::ffff:127."*) ;;
            *) log "WARNING: $1 port $2 is listening on $addr, not only on loopback" ;;
        esac
    done
}

check_port() { # what portfile wanted: our running server must be on the requested port
    local recorded
    recorded=$(cat -- "$2" 2>/dev/null || true)
    if [[ -n $recorded && $recorded != "$3" ]]; then
        die "$1 runs on port $recorded, not $3; run '$0 down' first to change ports"
    fi
}

with_lock() {
    mkdir -p -- "$STATE"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$STATE/.services.lock"
        flock -w 600 9 || die "timed out waiting for another services.sh to finish"
    fi
}

# ---------------------------------------------------------------------------------------------
# RabbitMQ

rmq_bindir() {
    # Debian's /usr/sbin/rabbitmq-* are wrappers that switch to the rabbitmq user and use
    # /var/lib/rabbitmq; the real scripts live in /usr/lib/rabbitmq/bin.
    if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
        printf '%s\n' /usr/lib/rabbitmq/bin
    elif command -v rabbitmq-server >/dev/null 2>&1; then
        dirname -- "$(command -v rabbitmq-server)"
    else
        return 1
    fi
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

rmq_install() {
    rmq_bindir >/dev/null && return 0
    command -v apt-get >/dev/null 2>&1 ||
        die "rabbitmq-server is not installed and apt-get is not available; install RabbitMQ 3.10+ yourself"
    log "installing rabbitmq-server with apt-get (one-off)"
    # Keep the package from auto-starting a system-wide node listening on all interfaces.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' >'$policy' && chmod 755 '$policy'"
        created_policy=1
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 ||
        log "WARNING: apt-get update failed; trying the install anyway"
    local rc=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        rabbitmq-server >&2 || rc=$?
    if ((created_policy)); then
        as_root rm -f "$policy"
        trap - EXIT
    fi
    ((rc == 0)) || die "apt-get install rabbitmq-server failed (exit $rc)"
    rmq_bindir >/dev/null || die "rabbitmq-server still not found after installing it"
}

# Environment for our node and for the CLI tools talking to it (use inside a subshell).
rmq_env() {
    local v
    for v in $(compgen -e); do
        [[ $v == RABBITMQ_* ]] && unset "$v"
    done
    export HOME=$RMQ_DIR # the Erlang cookie lives here
    export RABBITMQ_CONF_ENV_FILE=$RMQ_DIR/rabbitmq-env.conf
    export RABBITMQ_NODENAME=$RMQ_NODE
    export RABBITMQ_NODE_IP_ADDRESS=$HOST
    export RABBITMQ_NODE_PORT=$AMQP_PORT
    export RABBITMQ_DIST_PORT=$AMQP_DIST_PORT
    export RABBITMQ_BASE=$RMQ_DIR
    export RABBITMQ_CONFIG_FILE=$RMQ_DIR/rabbitmq.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$RMQ_DIR/advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ_DIR/enabled_plugins
    export RABBITMQ_MNESIA_BASE=$RMQ_DIR/mnesia
    export RABBITMQ_LOG_BASE=$RMQ_DIR/log
    export RABBITMQ_PID_FILE=$RMQ_PIDFILE
    export RABBITMQ_PLUGINS_EXPAND_DIR=$RMQ_DIR/plugins-expand
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export ERL_EPMD_ADDRESS=$HOST
    export ERL_CRASH_DUMP=$RMQ_DIR/erl_crash.dump
}

rmq_ctl() { # rabbitmqctl against our node
    local bindir
    bindir=$(rmq_bindir) || die "rabbitmqctl not found"
    (
        rmq_env
        cd -- "$RMQ_DIR"
        "$bindir/rabbitmqctl" -n "$RMQ_NODE" "$@"
    )
}

rmq_write_config() {
    mkdir -p -- "$RMQ_DIR/log" "$RMQ_DIR/mnesia"
    : >"$RMQ_DIR/rabbitmq-env.conf" # shadow /etc/rabbitmq/rabbitmq-env.conf
    printf '[].\n' >"$RMQ_DIR/enabled_plugins" # no management or any other plugin
    printf '[].\n' >"$RMQ_DIR/advanced.config"
    cat >"$RMQ_DIR/rabbitmq.conf" <<EOF
# Generated by deploy/local/services.sh on every start; edits are overwritten.
listeners.tcp.default = $HOST:$AMQP_PORT
distribution.listener.interface = $HOST
distribution.listener.port_range.min = $AMQP_DIST_PORT
distribution.listener.port_range.max = $AMQP_DIST_PORT
loopback_users.guest = true
cluster_formation.peer_discovery_backend = classic_config
log.console = false
log.file.level = info
disk_free_limit.absolute = 50MB
EOF
}

rmq_start() {
    rmq_install
    local bindir pid rc=0
    bindir=$(rmq_bindir)
    rmq_write_config
    warn_if_not_loopback epmd "${ERL_EPMD_PORT:-4369}"
    log "starting RabbitMQ node $RMQ_NODE on $HOST:$AMQP_PORT (state in .state/rabbitmq)"
    printf '\n=== %s start\n' "$(date -Is)" >>"$RMQ_STARTUP_LOG"
    (
        exec 9>&- # do not hand the services.sh lock to the daemon
        rmq_env
        cd -- "$RMQ_DIR"
        exec setsid "$bindir/rabbitmq-server" </dev/null >>"$RMQ_STARTUP_LOG" 2>&1
    ) &
    pid=$!
    printf '%s\n' "$pid" >"$RMQ_PIDFILE"
    printf '%s\n' "$AMQP_PORT" >"$RMQ_DIR/port"
    probe amqp "$AMQP_PORT" --wait "$WAIT_S" --pid "$pid" -q || rc=$?
    if ((rc != 0)); then
        show_log_tail "$RMQ_STARTUP_LOG"
        show_log_tail "$RMQ_LOG"
        case $rc in
            3) die "RabbitMQ exited during startup (logs above, in .state/rabbitmq/log)" ;;
            2) die "something that is not our RabbitMQ answers on $HOST:$AMQP_PORT" ;;
            *) die "RabbitMQ did not answer an AMQP handshake within ${WAIT_S}s (logs above; it may still be starting, pid $pid: '$0 down' stops it)" ;;
        esac
    fi
    # Quorum queues need their feature flag; fresh 3.10 nodes enable all stable flags, but a node
    # created by an older version may not have. Idempotent.
    rmq_ctl -q enable_feature_flag all >&2 ||
        log "WARNING: could not enable all feature flags (quorum queues may be unavailable)"
    log "RabbitMQ is up (pid $(cat -- "$RMQ_PIDFILE" 2>/dev/null || echo "$pid"))"
}

rmq_stop() {
    local pid
    if pid=$(our_pid rabbitmq "$RMQ_PIDFILE"); then
        log "stopping RabbitMQ (pid $pid)"
        stop_pid RabbitMQ "$pid"
        rm -f -- "$RMQ_PIDFILE"
    else
        local rc=0
        probe amqp "$AMQP_PORT" -q || rc=$?
        if ((rc == 0)); then
            log "RabbitMQ on $HOST:$AMQP_PORT was not started by this script; leaving it alone"
        else
            log "RabbitMQ is not running"
        fi
    fi
}

# Reuse whatever already answers on the port; otherwise start our node.
rmq_up() {
    local pid rc=0
    if pid=$(our_pid rabbitmq "$RMQ_PIDFILE"); then
        check_port "RabbitMQ (pid $pid)" "$RMQ_DIR/port" "$AMQP_PORT"
        probe amqp "$AMQP_PORT" -q || rc=$?
        ((rc == 0)) && return 0
        ((rc != 2)) || die "RabbitMQ (pid $pid) is running, but $HOST:$AMQP_PORT is answered by something that does not speak AMQP"
        log "RabbitMQ (pid $pid) is running but not answering yet; waiting"
        rc=0
        probe amqp "$AMQP_PORT" --wait "$WAIT_S" --pid "$pid" -q || rc=$?
        ((rc == 0)) && return 0
        show_log_tail "$RMQ_LOG"
        die "RabbitMQ (pid $pid) does not answer an AMQP handshake; try: $0 restart-rabbitmq"
    fi
    probe amqp "$AMQP_PORT" -q || rc=$?
    case $rc in
        0)
            log "reusing the AMQP server already answering on $HOST:$AMQP_PORT (not started by this script)"
            warn_if_not_loopback AMQP "$AMQP_PORT"
            return 0
            ;;
        2) die "port $HOST:$AMQP_PORT is taken by something that does not speak AMQP; set IMAGED_LOCAL_AMQP_PORT" ;;
    esac
    rmq_start
}

# ---------------------------------------------------------------------------------------------
# MongoDB-compatible server: mongod if available, else FerretDB (SQLite backend)

mongo_kind() {
    case ${IMAGED_LOCAL_MONGO:-} in
        ferretdb) echo ferretdb ;;
        mongod)
            command -v mongod >/dev/null 2>&1 || die "IMAGED_LOCAL_MONGO=mongod, but mongod is not on PATH"
            echo mongod
            ;;
        "") if command -v mongod >/dev/null 2>&1; then echo mongod; else echo ferretdb; fi ;;
        *) die "IMAGED_LOCAL_MONGO must be mongod or ferretdb, not '$IMAGED_LOCAL_MONGO'" ;;
    esac
}

mongo_pidfile() { if [[ $1 == mongod ]]; then echo "$MONGOD_PIDFILE"; else echo "$FDB_PIDFILE"; fi; }
mongo_logfile() { if [[ $1 == mongod ]]; then echo "$MONGOD_LOG"; else echo "$FDB_LOG"; fi; }

FDB_RECIPE=2 # bump when fdb_build changes in a way that needs a rebuild
fdb_stamp() { # identifies the build inputs; a change triggers a rebuild
    { echo "recipe $FDB_RECIPE"; cat -- "$FDB_MODULE_DIR/go.mod" "$FDB_MODULE_DIR/go.sum"; } | cksum | awk '{print $1}'
}

# FerretDB 1.24's SQLite backend looks documents up by `_ferretdb_sjson->'$._id'`, but creates the unique
# `_id` index on `_ferretdb_sjson->"_id"`. SQLite uses an expression index only for the very expression it
# was built on, so every find, update, findAndModify and delete by _id scans the whole table: 3 ms with 100
# documents, 50 ms with 3,000, growing without end as finished tasks are kept. Both expressions name the
# same JSON member (a plain label after -> means '$.label'), so spelling the lookup like the index makes
# SQLite search the index instead. Nothing stored changes. The explain test in tests/integration checks it.
fdb_patch_id_lookups() { # source dir
    local file=$1/internal/backends/sqlite/metadata/metadata.go
    local before="IDColumn = DefaultColumn + \"->'\$._id'\""
    local after="IDColumn = DefaultColumn + \"->'_id'\""
    grep -qF -- "$before" "$file" || die "FerretDB source changed: '$before' not found in $file"
    sed -i "s/->'\$\._id'/->'_id'/" "$file"
    grep -qF -- "$after" "$file" || die "patching $file failed"
}

# Build FerretDB once from the pinned Go tools module in deploy/local/ferretdb.
fdb_build() {
    local stamp
    stamp=$(fdb_stamp)
    if [[ -x $FDB_BIN && -f $FDB_BIN.stamp && $(<"$FDB_BIN.stamp") == "$stamp" ]]; then
        return 0
    fi
    command -v go >/dev/null 2>&1 || die "neither mongod nor Go (>= 1.24, to build FerretDB) is on PATH"
    log "building FerretDB from deploy/local/ferretdb (one-off, may take a few minutes)"
    local build=$STATE/build/ferretdb t0
    t0=$(ms_now)
    rm -rf -- "$build"
    mkdir -p -- "$build" "$STATE/bin"
    (
        cd -- "$FDB_MODULE_DIR"
        export GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0
        local version src
        version=$(go list -m -f '{{.Version}}' github.com/FerretDB/FerretDB)
        go mod download github.com/FerretDB/FerretDB
        src=$(go list -m -f '{{.Dir}}' github.com/FerretDB/FerretDB)
        [[ -n $src && -d $src ]] || die "FerretDB module source not found after go mod download"
        # FerretDB panics at start unless build/version/version.txt (normally generated by its
        # release tooling, absent from the module zip) is embedded. The module cache is read-only
        # and go refuses overlays there, so build from a copy of the pinned, checksum-verified
        # source with that one file added, via a replace in a scratch copy of our go.mod.
        cp -R -- "$src" "$build/src"
        chmod -R u+w -- "$build/src"
        printf '%s\n' "$version" >"$build/src/build/version/version.txt"
        printf 'imaged-local\n' >"$build/src/build/version/package.txt"
        fdb_patch_id_lookups "$build/src"
        cp -- go.mod go.sum "$build/"
        go mod edit -modfile="$build/go.mod" -replace="github.com/FerretDB/FerretDB=$build/src"
        GOBIN=$STATE/bin go install -modfile="$build/go.mod" -trimpath "$FDB_PKG"
    ) >&2 || die "building FerretDB failed"
    rm -rf -- "$build"
    "$FDB_BIN" --version >/dev/null 2>&1 || die "the FerretDB binary does not start: $("$FDB_BIN" --version 2>&1 | head -3)"
    printf '%s\n' "$stamp" >"$FDB_BIN.stamp"
    log "built .state/bin/ferretdb in $((($(ms_now) - t0) / 1000)) s"
}

mongo_start() {
    local kind=$1 pid rc=0 logfile pidfile
    logfile=$(mongo_logfile "$kind")
    pidfile=$(mongo_pidfile "$kind")
    if [[ $kind == ferretdb ]]; then
        fdb_build
        mkdir -p -- "$FDB_DATA"
        log "starting FerretDB (SQLite backend) on $HOST:$MONGO_PORT (data in .state/ferretdb/data)"
        printf '\n=== %s start\n' "$(date -Is)" >>"$logfile"
        (
            exec 9>&-
            cd -- "$FDB_DIR"
            # A clean environment: no inherited FERRETDB_* settings (e.g. an OTLP endpoint).
            exec env -i PATH="/usr/bin:/bin" DO_NOT_TRACK=1 TZ=UTC \
                setsid "$FDB_BIN" \
                --listen-addr="$HOST:$MONGO_PORT" \
                --handler=sqlite \
                --sqlite-url="file:$FDB_DATA/" \
                --state-dir="$FDB_DIR" \
                --telemetry=disable \
                --debug-addr=- \
                --otel-traces-url= \
                --log-level=warn \
                --no-log-uuid --no-metrics-uuid \
                </dev/null >>"$logfile" 2>&1
        ) &
    else
        mkdir -p -- "$MONGOD_DATA"
        log "starting mongod on $HOST:$MONGO_PORT (data in .state/mongod/data)"
        printf '\n=== %s start\n' "$(date -Is)" >>"$logfile"
        (
            exec 9>&-
            cd -- "$MONGOD_DIR"
            exec setsid mongod --dbpath "$MONGOD_DATA" --bind_ip "$HOST" --port "$MONGO_PORT" \
                --nounixsocket </dev/null >>"$logfile" 2>&1
        ) &
    fi
    pid=$!
    printf '%s\n' "$pid" >"$pidfile"
    printf '%s\n' "$MONGO_PORT" >"$pidfile.port"
    probe mongo "$MONGO_PORT" --wait "$WAIT_S" --pid "$pid" -q || rc=$?
    if ((rc != 0)); then
        show_log_tail "$logfile"
        case $rc in
            3) die "$kind exited during startup (log above: ${logfile#"$REPO"/})" ;;
            2) die "something that is not our $kind answers on $HOST:$MONGO_PORT" ;;
            *) die "$kind did not answer a MongoDB handshake within ${WAIT_S}s (log above; pid $pid may still be starting: '$0 down' stops it)" ;;
        esac
    fi
    log "$kind is up (pid $pid)"
}

mongo_stop() {
    local stopped=0 kind pid
    for kind in ferretdb mongod; do
        if pid=$(our_pid "$kind" "$(mongo_pidfile "$kind")"); then
            log "stopping $kind (pid $pid)"
            stop_pid "$kind" "$pid"
            rm -f -- "$(mongo_pidfile "$kind")"
            stopped=1
        fi
    done
    ((stopped)) && return 0
    local rc=0
    probe mongo "$MONGO_PORT" -q || rc=$?
    if ((rc == 0)); then
        log "the MongoDB server on $HOST:$MONGO_PORT was not started by this script; leaving it alone"
    else
        log "MongoDB server is not running"
    fi
}

mongo_up() {
    local kind pid rc=0 other
    kind=$(mongo_kind)
    if pid=$(our_pid "$kind" "$(mongo_pidfile "$kind")"); then
        check_port "$kind (pid $pid)" "$(mongo_pidfile "$kind").port" "$MONGO_PORT"
        probe mongo "$MONGO_PORT" -q || rc=$?
        ((rc == 0)) && return 0
        ((rc != 2)) || die "$kind (pid $pid) is running, but $HOST:$MONGO_PORT is answered by something that does not speak MongoDB"
        log "$kind (pid $pid) is running but not answering yet; waiting"
        rc=0
        probe mongo "$MONGO_PORT" --wait "$WAIT_S" --pid "$pid" -q || rc=$?
        ((rc == 0)) && return 0
        show_log_tail "$(mongo_logfile "$kind")"
        die "$kind (pid $pid) does not answer a MongoDB handshake; try: $0 restart-mongo"
    fi
    probe mongo "$MONGO_PORT" -q || rc=$?
    case $rc in
        0)
            other=ferretdb
            [[ $kind == ferretdb ]] && other=mongod
            if pid=$(our_pid "$other" "$(mongo_pidfile "$other")"); then
                log "reusing $other (pid $pid) started earlier by this script"
            else
                log "reusing the MongoDB server already answering on $HOST:$MONGO_PORT (not started by this script)"
                warn_if_not_loopback MongoDB "$MONGO_PORT"
            fi
            return 0
            ;;
        2) die "port $HOST:$MONGO_PORT is taken by something that does not speak MongoDB; set IMAGED_LOCAL_MONGO_PORT" ;;
    esac
    mongo_start "$kind"
}

# ---------------------------------------------------------------------------------------------
# S3-compatible server: SeaweedFS, built from the pinned Go tools module in deploy/local/seaweedfs.
#
# `weed mini` rather than `weed server -filer -s3`: mini is SeaweedFS's mode for development. It sizes
# its volumes to the disk and grows one volume per new bucket (server mode grows 7 per bucket while
# allowing 8 volumes in all unless tuned), and it stops cleanly in about 2 s, where `weed server`
# takes ~27 s and drops the filer's unflushed metadata log because its volume server stops first.
# Mini also runs its admin server and a maintenance worker (vacuum etc.); here without the web UI or
# WebDAV, and, like every other listener, on 127.0.0.1 only.

s3_enabled() {
    case $S3_ENABLED in
        1 | yes | true | on) return 0 ;;
        0 | no | false | off) return 1 ;;
        *) die "IMAGED_LOCAL_S3 must be 1 or 0, not '$S3_ENABLED'" ;;
    esac
}

# The internal ports, derived from the S3 port unless IMAGED_LOCAL_S3_INTERNAL_PORT is set.
sw_ports() {
    if [[ ! $S3_PORT =~ ^[1-9][0-9]*$ ]] || ((S3_PORT < 1 || S3_PORT > 55535)); then
        die "IMAGED_LOCAL_S3_PORT must be a port number up to 55535 (its gRPC port is +10000), not '$S3_PORT'"
    fi
    SW_PORT_BASE=${IMAGED_LOCAL_S3_INTERNAL_PORT:-$((S3_PORT + 1000))}
    if [[ ! $SW_PORT_BASE =~ ^[1-9][0-9]*$ ]] || ((SW_PORT_BASE < 1 || SW_PORT_BASE > 55532)); then
        die "IMAGED_LOCAL_S3_INTERNAL_PORT must be a port number up to 55532, not '$SW_PORT_BASE'"
    fi
    SW_MASTER_PORT=$SW_PORT_BASE
    SW_VOLUME_PORT=$((SW_PORT_BASE + 1))
    SW_FILER_PORT=$((SW_PORT_BASE + 2))
    SW_ADMIN_PORT=$((SW_PORT_BASE + 3))
    # What the port file records: a running server must have been started with the same ports.
    SW_PORTS_ID="$S3_PORT (internal $SW_MASTER_PORT-$SW_ADMIN_PORT)"
}

SW_RECIPE=1 # bump when sw_build changes in a way that needs a rebuild
sw_stamp() { # identifies the build inputs; a change triggers a rebuild
    { echo "recipe $SW_RECIPE"; cat -- "$SW_MODULE_DIR/go.mod" "$SW_MODULE_DIR/go.sum"; } | cksum | awk '{print $1}'
}

sw_built() { [[ -x $SW_BIN && -f $SW_BIN.stamp && $(<"$SW_BIN.stamp") == "$(sw_stamp)" ]]; }

# Build `weed` once from deploy/local/seaweedfs (go.mod pins the version, go.sum every dependency).
# Nothing is patched: the module is built as the proxy serves it. The binary goes to a scratch GOBIN
# first and is then renamed into place, so a running server's binary is never overwritten.
sw_build() {
    sw_built && return 0
    command -v go >/dev/null 2>&1 ||
        die "Go (>= 1.26.6) is needed to build SeaweedFS, the local S3 server (or set IMAGED_LOCAL_S3=0)"
    log "building SeaweedFS from deploy/local/seaweedfs (one-off: 5 to 8 minutes and up to 2.6 GB of memory on 2 cores)"
    local build=$STATE/build/seaweedfs t0 stamp
    stamp=$(sw_stamp)
    t0=$(ms_now)
    rm -rf -- "$build"
    mkdir -p -- "$build" "$STATE/bin"
    (
        cd -- "$SW_MODULE_DIR"
        GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0 GOBIN=$build \
            go install -trimpath -ldflags='-s -w' "$SW_PKG"
    ) >&2 || die "building SeaweedFS failed"
    "$build/weed" version >/dev/null 2>&1 ||
        die "the SeaweedFS binary does not start: $("$build/weed" version 2>&1 | head -3 || true)"
    mv -f -- "$build/weed" "$SW_BIN"
    rm -rf -- "$build"
    printf '%s\n' "$stamp" >"$SW_BIN.stamp"
    log "built .state/bin/weed ($("$SW_BIN" version 2>/dev/null | head -1 || true)) in $((($(ms_now) - t0) / 1000)) s"
}

# The first build takes minutes: `up` runs it before taking the services lock (under a lock of its
# own), so that a concurrent `up`, `down` or restart of the other servers is not held up meanwhile.
sw_build_locked() {
    sw_built && return 0
    mkdir -p -- "$STATE"
    if command -v flock >/dev/null 2>&1; then
        exec 8>"$STATE/.build-seaweedfs.lock"
        flock -w 1800 8 || die "timed out waiting for another services.sh to finish building SeaweedFS"
    fi
    sw_build
    exec 8>&-
}

sw_write_config() {
    mkdir -p -- "$SW_DATA"
    # Static identities: only signed requests with this key are served (anonymous ones are refused).
    (
        umask 077
        cat >"$SW_S3_CONFIG" <<EOF
{
  "identities": [
    {
      "name": "$S3_ACCESS_KEY",
      "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
EOF
    )
    # SeaweedFS also reads master.toml, filer.toml and security.toml from /etc/seaweedfs and
    # /usr/local/etc/seaweedfs (HOME and the working directory are ours); say so if any exist.
    local f
    for f in /etc/seaweedfs/*.toml /usr/local/etc/seaweedfs/*.toml; do
        [[ -e $f ]] && log "WARNING: SeaweedFS will also read $f"
    done
    return 0
}

# `weed mini` moves a component to the next free port when its port is taken, which would leave the
# S3 server or its internals somewhere unexpected; fail clearly instead.
sw_check_ports_free() {
    command -v ss >/dev/null 2>&1 || return 0
    local base port addr
    for base in "$S3_PORT" "$SW_MASTER_PORT" "$SW_VOLUME_PORT" "$SW_FILER_PORT" "$SW_ADMIN_PORT"; do
        for port in "$base" "$((base + 10000))"; do # HTTP and gRPC
            addr=$(port_listeners "$port" | head -1)
            [[ -z $addr ]] || die "port $port, needed by SeaweedFS, is in use ($addr); set IMAGED_LOCAL_S3_PORT or IMAGED_LOCAL_S3_INTERNAL_PORT"
        done
    done
}

# s3_probe [ready.py options...]: a signed S3 request with our keys; see ready.py for the exit codes.
s3_probe() {
    probe s3 "$S3_PORT" --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" \
        --region "$S3_REGION" --bucket "$S3_BUCKET" "$@"
}

# The reason a quiet probe failed, on stderr.
s3_probe_reason() { s3_probe "$@" >/dev/null || true; }

sw_start() {
    sw_ports
    sw_build_locked
    sw_check_ports_free
    sw_write_config
    local pid rc=0 port
    log "starting SeaweedFS with S3 on $HOST:$S3_PORT, master/volume/filer/admin on $HOST:$SW_MASTER_PORT-$SW_ADMIN_PORT (data in .state/seaweedfs/data)"
    printf '\n=== %s start\n' "$(date -Is)" >>"$SW_LOG"
    (
        exec 9>&-
        cd -- "$SW_DIR"
        # A clean environment: no inherited WEED_* settings, AWS_* credentials or proxies; HOME is
        # ours so that no ~/.seaweedfs/*.toml applies.
        exec env -i PATH="/usr/bin:/bin" HOME="$SW_DIR" TZ=UTC \
            setsid "$SW_BIN" -logtostderr mini \
            -dir="$SW_DATA" \
            -ip="$HOST" -ip.bind="$HOST" \
            -master.port="$SW_MASTER_PORT" \
            -volume.port="$SW_VOLUME_PORT" \
            -filer.port="$SW_FILER_PORT" \
            -admin.port="$SW_ADMIN_PORT" -admin.port.legacy=0 -admin.ui=false \
            -s3.port="$S3_PORT" \
            -s3.config="$SW_S3_CONFIG" -s3.iam=false -s3.autoCreateBucket=false \
            -s3.port.iceberg=0 -s3.port.lance=0 \
            -webdav=false \
            -master.telemetry=false \
            -filer.localSocket="$SW_DIR/filer.sock" -s3.localSocket="$SW_DIR/s3.sock" \
            </dev/null >>"$SW_LOG" 2>&1
    ) &
    pid=$!
    printf '%s\n' "$pid" >"$SW_PIDFILE"
    printf '%s\n' "$SW_PORTS_ID" >"$SW_PIDFILE.port"
    s3_probe --create-bucket --wait "$WAIT_S" --pid "$pid" -q || rc=$?
    if ((rc != 0)); then
        show_log_tail "$SW_LOG"
        case $rc in
            3) die "SeaweedFS exited during startup (log above: ${SW_LOG#"$REPO"/})" ;;
            2)
                s3_probe_reason --create-bucket
                die "something that is not our SeaweedFS answers on $HOST:$S3_PORT (above), or it refuses our keys ('$0 down' stops pid $pid)"
                ;;
            *) die "SeaweedFS did not answer a signed S3 request within ${WAIT_S}s (log above; pid $pid may still be starting: '$0 down' stops it)" ;;
        esac
    fi
    for port in "$S3_PORT" "$SW_MASTER_PORT" "$SW_VOLUME_PORT" "$SW_FILER_PORT" "$SW_ADMIN_PORT"; do
        warn_if_not_loopback SeaweedFS "$port"
        warn_if_not_loopback SeaweedFS "$((port + 10000))"
    done
    log "SeaweedFS is up (pid $pid), bucket $S3_BUCKET ready"
}

sw_stop() {
    local pid
    if pid=$(our_pid seaweedfs "$SW_PIDFILE"); then
        log "stopping SeaweedFS (pid $pid)"
        stop_pid SeaweedFS "$pid"
        rm -f -- "$SW_PIDFILE"
    else
        local rc=0
        s3_probe -q || rc=$?
        if ((rc == 0 || rc == 4)); then
            log "the S3 server on $HOST:$S3_PORT was not started by this script; leaving it alone"
        else
            log "SeaweedFS is not running"
        fi
    fi
}

# Reuse an S3 server that already accepts our keys on the port; otherwise start ours. Either way the
# bucket exists afterwards.
s3_up() {
    local pid rc=0
    sw_ports
    if pid=$(our_pid seaweedfs "$SW_PIDFILE"); then
        check_port "SeaweedFS (pid $pid)" "$SW_PIDFILE.port" "$SW_PORTS_ID"
        s3_probe --create-bucket -q || rc=$?
        ((rc == 0)) && return 0
        if ((rc == 2)); then
            s3_probe_reason --create-bucket
            die "SeaweedFS (pid $pid) is running, but $HOST:$S3_PORT does not answer as our S3 server (above)"
        fi
        log "SeaweedFS (pid $pid) is running but not answering yet; waiting"
        rc=0
        s3_probe --create-bucket --wait "$WAIT_S" --pid "$pid" -q || rc=$?
        ((rc == 0)) && return 0
        show_log_tail "$SW_LOG"
        die "SeaweedFS (pid $pid) does not answer a signed S3 request; try: $0 restart-s3"
    fi
    s3_probe --create-bucket -q || rc=$?
    case $rc in
        0)
            log "reusing the S3 server already answering on $HOST:$S3_PORT with our keys (not started by this script)"
            warn_if_not_loopback S3 "$S3_PORT"
            return 0
            ;;
        2)
            s3_probe_reason --create-bucket
            die "port $HOST:$S3_PORT is taken by something that is not an S3 server accepting our keys (above); set IMAGED_LOCAL_S3_PORT"
            ;;
        *) ;;
    esac
    sw_start
}

# What a client needs, as shell assignments (boto3 >= 1.28 and the other AWS SDKs read them).
print_s3_env() { # indent
    printf '%sAWS_ENDPOINT_URL_S3=%s AWS_ACCESS_KEY_ID=%s AWS_SECRET_ACCESS_KEY=%s AWS_DEFAULT_REGION=%s\n' \
        "$1" "$S3_URL" "$S3_ACCESS_KEY" "$S3_SECRET_KEY" "$S3_REGION"
    printf '%sbucket: %s; addressing: path-style (http://%s:%s/%s/KEY)\n' "$1" "$S3_BUCKET" "$HOST" "$S3_PORT" "$S3_BUCKET"
}

# ---------------------------------------------------------------------------------------------

print_urls() {
    printf 'amqp: %s\n' "$AMQP_URL"
    printf 'mongodb: %s\n' "$MONGO_URL"
    if s3_enabled; then printf 's3: %s\n' "$S3_URL"; fi
}

cmd_up() {
    local t0
    t0=$(ms_now)
    if s3_enabled; then
        sw_ports
        # Build before taking the services lock, unless our server is running (then `up` reuses it;
        # `restart-s3` picks up a new pin). Outside the lock, only look at the pid file: our_pid
        # could remove one that a concurrent restart-s3 is writing.
        local pid=""
        if [[ -f $SW_PIDFILE ]]; then pid=$(tr -dc '0-9' <"$SW_PIDFILE" || true); fi
        if [[ -z $pid ]] || ! is_ours seaweedfs "$pid"; then sw_build_locked; fi
    fi
    with_lock
    rmq_up
    mongo_up
    if s3_enabled; then s3_up; fi
    log "ready in $(($(ms_now) - t0)) ms"
    print_urls
}

cmd_down() {
    with_lock
    rmq_stop
    mongo_stop
    sw_ports
    sw_stop
}

cmd_status() {
    local down=0 rc kind pid owner
    rc=0
    probe amqp "$AMQP_PORT" -q || rc=$?
    if pid=$(our_pid rabbitmq "$RMQ_PIDFILE"); then owner="pid $pid, started by services.sh"; else owner="not started by services.sh"; fi
    if ((rc == 0)); then
        printf 'rabbitmq: up   %s (%s)\n' "$AMQP_URL" "$owner"
    else
        printf 'rabbitmq: down %s\n' "$AMQP_URL"
        down=1
    fi
    rc=0
    probe mongo "$MONGO_PORT" -q || rc=$?
    owner="not started by services.sh"
    for kind in ferretdb mongod; do
        if pid=$(our_pid "$kind" "$(mongo_pidfile "$kind")"); then owner="$kind pid $pid, started by services.sh"; fi
    done
    if ((rc == 0)); then
        printf 'mongodb:  up   %s (%s)\n' "$MONGO_URL" "$owner"
    else
        printf 'mongodb:  down %s\n' "$MONGO_URL"
        down=1
    fi
    rc=0
    sw_ports
    s3_probe -q || rc=$?
    if pid=$(our_pid seaweedfs "$SW_PIDFILE"); then owner="seaweedfs pid $pid, started by services.sh"; else owner="not started by services.sh"; fi
    case $rc in
        0) printf 's3:       up   %s (%s)\n' "$S3_URL" "$owner" ;;
        4) printf 's3:       up   %s (%s), but bucket %s is missing: run up\n' "$S3_URL" "$owner" "$S3_BUCKET" ;;
        *)
            if s3_enabled; then
                printf 's3:       down %s\n' "$S3_URL"
                down=1
            else
                printf 's3:       off  %s (IMAGED_LOCAL_S3=%s)\n' "$S3_URL" "$S3_ENABLED"
            fi
            ;;
    esac
    if ((rc == 0 || rc == 4)); then print_s3_env '          '; fi
    ((rc != 4)) || down=1
    return "$down"
}

cmd_restart_rabbitmq() {
    with_lock
    if ! our_pid rabbitmq "$RMQ_PIDFILE" >/dev/null; then
        local rc=0
        probe amqp "$AMQP_PORT" -q || rc=$?
        ((rc != 0)) || die "the AMQP server on $HOST:$AMQP_PORT was not started by this script; cannot restart it"
    fi
    rmq_stop
    rmq_start
    printf 'amqp: %s\n' "$AMQP_URL"
}

cmd_restart_mongo() {
    with_lock
    local kind
    kind=$(mongo_kind)
    if ! our_pid "$kind" "$(mongo_pidfile "$kind")" >/dev/null; then
        local rc=0
        probe mongo "$MONGO_PORT" -q || rc=$?
        ((rc != 0)) || die "the MongoDB server on $HOST:$MONGO_PORT was not started by this script; cannot restart it"
    fi
    mongo_stop
    mongo_start "$kind"
    printf 'mongodb: %s\n' "$MONGO_URL"
}

cmd_restart_s3() {
    with_lock
    sw_ports
    if ! our_pid seaweedfs "$SW_PIDFILE" >/dev/null; then
        local rc=0
        s3_probe -q || rc=$?
        ((rc != 0 && rc != 4)) || die "the S3 server on $HOST:$S3_PORT was not started by this script; cannot restart it"
        ((rc != 2)) || die "port $HOST:$S3_PORT is taken by something that is not an S3 server accepting our keys; set IMAGED_LOCAL_S3_PORT"
    fi
    sw_stop
    sw_start
    printf 's3: %s\n' "$S3_URL"
}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

main() {
    local cmd=${1:-up}
    case $cmd in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        restart-rabbitmq) cmd_restart_rabbitmq ;;
        restart-mongo) cmd_restart_mongo ;;
        restart-s3) cmd_restart_s3 ;;
        help | -h | --help) usage ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
