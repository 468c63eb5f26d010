#!/usr/bin/env bash
# The local service stack, without Docker: S3 (nanio) + MLflow tracking server + Prefect server and worker.
#
#   infra/local/stack.sh up       start what is not running (idempotent), health-check it, configure DVC
#   infra/local/stack.sh down     stop exactly the processes this script started (each its own process group)
#   infra/local/stack.sh status   one line per service; exit 0 when all run and answer, 3 otherwise
#   infra/local/stack.sh env      the export lines a shell needs: `source <(infra/local/stack.sh env)`
#   infra/local/stack.sh remote [DIR]   (re)configure DIR's DVC remote for the stack (e.g. in a fresh clone)
#
# Services (127.0.0.1 only):
#   S3       nanio via infra/local/s3.sh; buckets dvc-store, mlflow-artifacts, models        port S3_PORT=9000
#   MLflow   `mlflow server`, backend MLFLOW_BACKEND_STORE_URI (default sqlite under the state dir),
#            artifacts proxied to s3://mlflow-artifacts/ (clients need no S3 keys)     port MLFLOW_PORT=5000
#   Prefect  `prefect server start` (PREFECT_HOME under the state dir), work pool mlops-process, the
#            deployments of prefect.yaml, one process worker in the project dir        port PREFECT_PORT=4200
# State, logs and pid files live under STACK_DIR (default .stack/, git-ignored). Credentials: NANIO_ACCESS_KEY
# / NANIO_SECRET_KEY from the environment, else infra/local/.env (STACK_ENV_FILE; generated, mode 600, on
# the first `up`). The secret is never printed. Ports chosen at `up` are remembered for the other commands.
# More knobs: MLOPS_PROJECT_DIR (the workspace the worker and DVC remote serve; default this repo),
# MLFLOW_WORKERS (2), MLFLOW_SERVER_EXTRA_ARGS (e.g. "--app-name basic-auth"), STACK_TIMEOUT (120 s per
# service), STACK_DVC_PREFIX (mlops-pipeline: s3://dvc-store/<prefix>), PREFECT_WORK_POOL (mlops-process).
# Prefect server settings pass through the environment (e.g. PREFECT_API_DATABASE_CONNECTION_URL for
# Postgres, PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED=false to keep the cron schedules from firing).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
STACK_DIR="${STACK_DIR:-$ROOT/.stack}"
mkdir -p "$STACK_DIR"
STACK_DIR="$(cd "$STACK_DIR" && pwd)"
RUN="$STACK_DIR/run"
LOGS="$STACK_DIR/logs"
PORTS_FILE="$RUN/ports"
ENV_FILE="${STACK_ENV_FILE:-$HERE/.env}"
BIN="${STACK_BIN:-$ROOT/.venv/bin}"
PROJECT_DIR="${MLOPS_PROJECT_DIR:-$ROOT}"
HOST=127.0.0.1
POOL="${PREFECT_WORK_POOL:-mlops-process}"
BUCKETS=(dvc-store mlflow-artifacts models)
DVC_REMOTE=store
DVC_PREFIX="${STACK_DVC_PREFIX:-mlops-pipeline}"
TIMEOUT="${STACK_TIMEOUT:-120}"
export STACK_DIR STACK_ENV_FILE="$ENV_FILE" NANIO_BIN="${NANIO_BIN:-$BIN/nanio}"

die() { echo "stack.sh: error: $*" >&2; exit 1; }
say() { echo "stack.sh: $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- ports: explicit env var > the ports the running stack was started with > default ---------------------
recorded_port() { [[ -f "$PORTS_FILE" ]] || return 0; sed -n "s/^$1=//p" "$PORTS_FILE" | tail -n 1; }
S3_PORT="${S3_PORT:-$(recorded_port S3_PORT)}"; S3_PORT="${S3_PORT:-9000}"
MLFLOW_PORT="${MLFLOW_PORT:-$(recorded_port MLFLOW_PORT)}"; MLFLOW_PORT="${MLFLOW_PORT:-5000}"
PREFECT_PORT="${PREFECT_PORT:-$(recorded_port PREFECT_PORT)}"; PREFECT_PORT="${PREFECT_PORT:-4200}"
for var in S3_PORT MLFLOW_PORT PREFECT_PORT; do
    [[ "${!var}" =~ ^[0-9]+$ ]] && (( ${!var} >= 1 && ${!var} <= 65535 )) || die "$var must be a port number, got '${!var}'"
done
export S3_PORT
S3_URL="http://$HOST:$S3_PORT"
MLFLOW_URL="http://$HOST:$MLFLOW_PORT"
PREFECT_API="http://$HOST:$PREFECT_PORT/api"
PREFECT_HOME_DIR="$STACK_DIR/prefect"
MLFLOW_BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STACK_DIR/mlflow/mlflow.db}"

# --- credentials (read like s3.sh: the .env file is parsed, never executed) -------------------------------
env_value() {
    sed -n "s/^[[:space:]]*\(export[[:space:]]\+\)\?$1=//p" "$ENV_FILE" 2>/dev/null | tail -n 1 | sed "s/^[\"']//; s/[\"']$//"
}
load_credentials() {
    if [[ -n "${NANIO_ACCESS_KEY:-}" && -n "${NANIO_SECRET_KEY:-}" ]]; then
        ACCESS_KEY="$NANIO_ACCESS_KEY"; SECRET_KEY="$NANIO_SECRET_KEY"; return 0
    fi
    [[ -f "$ENV_FILE" ]] || return 1
    ACCESS_KEY="$(env_value NANIO_ACCESS_KEY)"; SECRET_KEY="$(env_value NANIO_SECRET_KEY)"
    [[ -n "$ACCESS_KEY" && -n "$SECRET_KEY" ]] || die "$ENV_FILE must define NANIO_ACCESS_KEY and NANIO_SECRET_KEY"
}

# --- processes --------------------------------------------------------------------------------------------
# Each service: a pid file in $RUN holding the pid of a process-group leader started with setsid, and a
# marker that its command line must contain (so a stale pid file never makes us signal someone else's process).
declare -A MARKER=([mlflow]="mlflow server" [prefect-server]="prefect server start" [worker]="prefect worker start")
declare -A LABEL=([mlflow]="MLflow server" [prefect-server]="Prefect server" [worker]="Prefect worker")

running_pid() {  # running_pid NAME → pid if our process is alive, else fails
    local name="$1" pid
    [[ -f "$RUN/$name.pid" ]] || return 1
    pid="$(cat "$RUN/$name.pid" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "${MARKER[$name]}" || return 1
    echo "$pid"
}

nanio_pid() { S3_PORT="$S3_PORT" "$HERE/s3.sh" status >/dev/null 2>&1 && cat "$STACK_DIR/s3/nanio.pid"; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

http_ok() { curl -fsS -o /dev/null -m 3 "$1" 2>/dev/null; }

group_alive() { kill -0 -- "-$1" 2>/dev/null; }

stop_group() {  # stop_group NAME GRACE_SECONDS: TERM the whole group, KILL what is left after the grace period
    local name="$1" grace="$2" pid i
    if ! pid="$(running_pid "$name")"; then
        rm -f "$RUN/$name.pid"
        say "${LABEL[$name]}: not running"
        return 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 4; i++)); do
        group_alive "$pid" || break
        sleep 0.25
    done
    if group_alive "$pid"; then
        kill -KILL -- "-$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do group_alive "$pid" || break; sleep 0.25; done
        say "${LABEL[$name]}: stopped (pid $pid; SIGKILL after ${grace}s)"
    else
        say "${LABEL[$name]}: stopped (pid $pid)"
    fi
    rm -f "$RUN/$name.pid"
}

launch() {  # launch NAME DIR CMD...: start CMD in DIR in its own session/process group; log under $LOGS
    local name="$1" dir="$2"; shift 2
    echo "--- $(date -u +%FT%TZ) start: $*" >>"$LOGS/$name.log"
    (cd "$dir" && exec setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null) &
    echo "$!" >"$RUN/$name.pid"
}

wait_until() {  # wait_until NAME WHAT CHECK...: poll CHECK until it succeeds; fail with the log tail
    local name="$1" what="$2" deadline; shift 2
    deadline=$(( $(date +%s) + TIMEOUT ))
    while ! "$@"; do
        if ! running_pid "$name" >/dev/null; then
            echo "stack.sh: ${LABEL[$name]} exited during start-up; last lines of $LOGS/$name.log:" >&2
            tail -n 25 "$LOGS/$name.log" >&2
            rm -f "$RUN/$name.pid"
            exit 1
        fi
        if (( $(date +%s) >= deadline )); then
            echo "stack.sh: ${LABEL[$name]} did not $what within ${TIMEOUT}s (STACK_TIMEOUT); stopping it." \
                 "Last lines of $LOGS/$name.log:" >&2
            tail -n 25 "$LOGS/$name.log" >&2
            stop_group "$name" 5 >&2
            exit 1
        fi
        sleep 0.5
    done
}

pool_ready() { curl -fsS -m 3 "$PREFECT_API/work_pools/$POOL" 2>/dev/null | grep -q '"status": *"READY"'; }

prefect_env() {  # run a command with the client settings for the stack's Prefect server
    PREFECT_HOME="$PREFECT_HOME_DIR" PREFECT_API_URL="$PREFECT_API" PREFECT_SERVER_ANALYTICS_ENABLED=false \
        PREFECT_CLI_WRAP_LINES=false PATH="$BIN:$PATH" "$@"
}

# --- pieces of `up` ---------------------------------------------------------------------------------------
check_ports() {  # refuse before starting anything when a port we need is taken by a process that is not ours
    local busy=() var recorded
    if nanio_pid >/dev/null || running_pid mlflow >/dev/null || running_pid prefect-server >/dev/null; then
        for var in S3_PORT MLFLOW_PORT PREFECT_PORT; do
            recorded="$(recorded_port "$var")"
            [[ -z "$recorded" || "$recorded" == "${!var}" ]] \
                || die "the stack in $STACK_DIR runs with $var=$recorded; run '$0 down' before changing ports"
        done
    fi
    nanio_pid >/dev/null || ! port_open "$S3_PORT" || busy+=("$S3_PORT (S3, S3_PORT)")
    running_pid mlflow >/dev/null || ! port_open "$MLFLOW_PORT" || busy+=("$MLFLOW_PORT (MLflow, MLFLOW_PORT)")
    running_pid prefect-server >/dev/null || ! port_open "$PREFECT_PORT" || busy+=("$PREFECT_PORT (Prefect, PREFECT_PORT)")
    if (( ${#busy[@]} )); then
        local p
        for p in "${busy[@]}"; do
            echo "stack.sh: error: port $p on $HOST is already in use by another process" >&2
        done
        echo "stack.sh: nothing was started. Stop that process or choose free ports, e.g." \
             "S3_PORT=9100 MLFLOW_PORT=5100 PREFECT_PORT=4300 $0 up" >&2
        exit 1
    fi
    (( S3_PORT != MLFLOW_PORT && S3_PORT != PREFECT_PORT && MLFLOW_PORT != PREFECT_PORT )) \
        || die "S3_PORT, MLFLOW_PORT and PREFECT_PORT must differ ($S3_PORT, $MLFLOW_PORT, $PREFECT_PORT)"
}

create_buckets() {
    AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" AWS_DEFAULT_REGION=us-east-1 \
        "$BIN/python" - "$S3_URL" "${BUCKETS[@]}" <<'PY'
import sys

import boto3
from botocore.config import Config

s3 = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path"}))
have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
missing = [name for name in sys.argv[2:] if name not in have]
for name in missing:
    s3.create_bucket(Bucket=name)
print("stack.sh: S3 buckets: " + ", ".join(f"{n}{' (created)' if n in missing else ''}" for n in sys.argv[2:]))
PY
}

configure_dvc_remote() {  # configure_dvc_remote DIR: the DVC remote `store` in DIR/.dvc/config.local
    local dir="$1"
    [[ -d "$dir/.dvc" ]] || { say "DVC remote: $dir is not a DVC repository; skipped"; return 0; }
    # The secret goes in through the environment (not argv, so no `ps` shows it) and lands only in
    # .dvc/config.local, which DVC git-ignores. Same result as `dvc remote add --local -d -f store s3://…`
    # plus `dvc remote modify --local store endpointurl|access_key_id|secret_access_key …`.
    STACK_S3_KEY="$ACCESS_KEY" STACK_S3_SECRET="$SECRET_KEY" "$BIN/python" - "$dir" "$DVC_REMOTE" \
        "s3://dvc-store/$DVC_PREFIX" "$S3_URL" <<'PY'
import os
import sys
from pathlib import Path

from dvc.config import Config

root, name, url, endpoint = sys.argv[1:]
config = Config(dvc_dir=str(Path(root) / ".dvc"))
with config.edit("local") as conf:
    conf["remote"][name] = {"url": url, "endpointurl": endpoint, "access_key_id": os.environ["STACK_S3_KEY"],
                            "secret_access_key": os.environ["STACK_S3_SECRET"], "region": "us-east-1"}
    conf["core"]["remote"] = name
os.chmod(Path(root) / ".dvc" / "config.local", 0o600)
print(f"stack.sh: DVC remote '{name}' (default, local config) -> {url} at {endpoint} in {root}")
PY
}

deploy_prefect() {  # apply prefect.yaml unless the same file was already applied to this server
    local stamp="$RUN/deployed" want
    [[ -f "$PROJECT_DIR/prefect.yaml" ]] || { say "Prefect: no prefect.yaml in $PROJECT_DIR; no deployments"; return 0; }
    want="$PROJECT_DIR $PREFECT_PORT $(sha256sum "$PROJECT_DIR/prefect.yaml" | cut -d' ' -f1)"
    if [[ "$(cat "$stamp" 2>/dev/null)" == "$want" && "${1:-}" != force ]]; then
        say "Prefect: deployments from $PROJECT_DIR/prefect.yaml already applied"
        return 0
    fi
    local t0; t0="$(now)"
    if ! (cd "$PROJECT_DIR" && MLOPS_PROJECT_DIR="$PROJECT_DIR" prefect_env "$BIN/prefect" --no-prompt deploy --all) \
            >>"$LOGS/prefect-deploy.log" 2>&1; then
        echo "stack.sh: error: 'prefect deploy --all' failed; last lines of $LOGS/prefect-deploy.log:" >&2
        tail -n 25 "$LOGS/prefect-deploy.log" >&2
        exit 1
    fi
    echo "$want" >"$stamp"
    say "Prefect: deployments applied from $PROJECT_DIR/prefect.yaml ($(since "$t0") s)"
}

ensure_pool() {
    if curl -fsS -o /dev/null -m 3 "$PREFECT_API/work_pools/$POOL" 2>/dev/null; then
        return 0
    fi
    prefect_env "$BIN/prefect" work-pool create "$POOL" --type process >>"$LOGS/prefect-deploy.log" 2>&1 \
        || { tail -n 15 "$LOGS/prefect-deploy.log" >&2; die "could not create the work pool $POOL"; }
    say "Prefect: work pool $POOL (process) created"
}

# --- commands ---------------------------------------------------------------------------------------------
cmd_up() {
    local t_all t0 pid started_mlflow=no started_prefect=no
    t_all="$(now)"
    [[ -x "$BIN/mlflow" && -x "$BIN/prefect" && -x "$BIN/python" ]] \
        || die "$BIN has no mlflow/prefect/python: run 'make setup' first (or set STACK_BIN to a venv's bin)"
    command -v curl >/dev/null || die "curl is required"
    check_ports
    mkdir -p "$RUN" "$LOGS" "$STACK_DIR/mlflow" "$PREFECT_HOME_DIR"
    printf 'S3_PORT=%s\nMLFLOW_PORT=%s\nPREFECT_PORT=%s\n' "$S3_PORT" "$MLFLOW_PORT" "$PREFECT_PORT" >"$PORTS_FILE"

    # 1. S3 (s3.sh is idempotent, generates the credentials file on first use)
    t0="$(now)"
    "$HERE/s3.sh" start >>"$LOGS/s3.log" 2>&1 || { tail -n 20 "$LOGS/s3.log" >&2; die "the S3 server did not start"; }
    load_credentials || die "no S3 credentials after s3.sh start"
    say "S3: nanio running (pid $(nanio_pid)) at $S3_URL, data in $STACK_DIR/s3 ($(since "$t0") s)"
    create_buckets

    # 2. MLflow and Prefect servers start in parallel (MLflow takes 15-35 s to answer)
    if pid="$(running_pid mlflow)"; then
        say "MLflow server: already running (pid $pid)"
    else
        local extra=()
        read -r -a extra <<<"${MLFLOW_SERVER_EXTRA_ARGS:-}"
        # Job execution (huey consumers for MLflow's GenAI jobs, ~1.7 GB RSS, slower start) is not used here.
        MLFLOW_S3_ENDPOINT_URL="$S3_URL" AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" \
            AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL="$S3_URL" \
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
            launch mlflow "$STACK_DIR" "$BIN/mlflow" server --backend-store-uri "$MLFLOW_BACKEND" \
            --artifacts-destination s3://mlflow-artifacts/ --serve-artifacts \
            --host "$HOST" --port "$MLFLOW_PORT" --workers "${MLFLOW_WORKERS:-2}" ${extra[@]+"${extra[@]}"}
        started_mlflow="$(now)"
    fi
    if pid="$(running_pid prefect-server)"; then
        say "Prefect server: already running (pid $pid)"
    else
        PREFECT_HOME="$PREFECT_HOME_DIR" PREFECT_SERVER_ANALYTICS_ENABLED=false \
            launch prefect-server "$STACK_DIR" "$BIN/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
        started_prefect="$(now)"
    fi

    # 3. the DVC remote needs only S3: configure it while the servers boot
    configure_dvc_remote "$PROJECT_DIR"

    if [[ "$started_prefect" != no ]]; then
        wait_until prefect-server "answer on $PREFECT_API/health" http_ok "$PREFECT_API/health"
        say "Prefect server: running (pid $(running_pid prefect-server)) at $PREFECT_API" \
            "(answering after $(since "$started_prefect") s)"
    elif ! http_ok "$PREFECT_API/health"; then
        die "Prefect server (pid $(running_pid prefect-server)) runs but $PREFECT_API/health does not answer; see $LOGS/prefect-server.log"
    fi

    # 4. work pool, deployments, worker (while MLflow still boots; the worker gets the stack's env: its
    #    flows use MLflow + S3 too)
    ensure_pool
    if [[ "$started_prefect" != no ]]; then deploy_prefect force; else deploy_prefect; fi
    if pid="$(running_pid worker)"; then
        say "Prefect worker: already running (pid $pid)"
    else
        t0="$(now)"
        MLOPS_PROJECT_DIR="$PROJECT_DIR" MLFLOW_TRACKING_URI="$MLFLOW_URL" AWS_ENDPOINT_URL="$S3_URL" \
            AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" AWS_DEFAULT_REGION=us-east-1 \
            prefect_env launch worker "$PROJECT_DIR" "$BIN/prefect" worker start --pool "$POOL" --type process
        wait_until worker "report to work pool $POOL" pool_ready
        say "Prefect worker: running (pid $(running_pid worker)) in $PROJECT_DIR, pool $POOL ready ($(since "$t0") s)"
    fi
    if [[ "$started_mlflow" != no ]]; then
        wait_until mlflow "answer on $MLFLOW_URL/health" http_ok "$MLFLOW_URL/health"
        say "MLflow server: running (pid $(running_pid mlflow)) at $MLFLOW_URL, backend ${MLFLOW_BACKEND%%:*}," \
            "artifacts s3://mlflow-artifacts/ (answering after $(since "$started_mlflow") s)"
    elif ! http_ok "$MLFLOW_URL/health"; then
        die "MLflow server (pid $(running_pid mlflow)) runs but $MLFLOW_URL/health does not answer; see $LOGS/mlflow.log"
    fi
    say "stack up in $(since "$t_all") s. Use it: source <($0 env)"
}

cmd_down() {
    stop_group worker 15
    stop_group prefect-server 15
    stop_group mlflow 5  # ignores SIGTERM for >10 s (its uvicorn/huey children); nothing to lose with sqlite
    S3_PORT="$S3_PORT" "$HERE/s3.sh" stop | sed 's/^s3.sh: /stack.sh: S3: /'
    rm -f "$RUN/deployed"
    local port busy=()
    for port in "$S3_PORT" "$MLFLOW_PORT" "$PREFECT_PORT"; do
        port_open "$port" && busy+=("$port")
    done
    if (( ${#busy[@]} )); then
        say "note: port(s) ${busy[*]} still answer: not a process this script started"
    fi
    return 0
}

cmd_status() {
    local ok=0 pid
    if pid="$(nanio_pid)"; then
        say "S3: running (pid $pid) at $S3_URL"
    else
        say "S3: stopped"; ok=3
    fi
    if pid="$(running_pid mlflow)"; then
        if http_ok "$MLFLOW_URL/health"; then say "MLflow server: running (pid $pid) at $MLFLOW_URL"
        else say "MLflow server: process $pid alive but $MLFLOW_URL/health does not answer"; ok=3; fi
    else
        say "MLflow server: stopped"; ok=3
    fi
    if pid="$(running_pid prefect-server)"; then
        if http_ok "$PREFECT_API/health"; then say "Prefect server: running (pid $pid) at $PREFECT_API"
        else say "Prefect server: process $pid alive but $PREFECT_API/health does not answer"; ok=3; fi
    else
        say "Prefect server: stopped"; ok=3
    fi
    if pid="$(running_pid worker)"; then
        if pool_ready; then say "Prefect worker: running (pid $pid), pool $POOL ready"
        else say "Prefect worker: process $pid alive, pool $POOL not ready"; ok=3; fi
    else
        say "Prefect worker: stopped"; ok=3
    fi
    return "$ok"
}

cmd_env() {
    load_credentials || die "no credentials yet: run '$0 up' first (it generates $ENV_FILE)"
    echo "# the local stack (infra/local/stack.sh); the S3 secret is read from its file, never printed"
    echo "export MLFLOW_TRACKING_URI=$MLFLOW_URL"
    echo "export PREFECT_API_URL=$PREFECT_API"
    echo "export AWS_ENDPOINT_URL=$S3_URL"
    echo "export AWS_ACCESS_KEY_ID=$ACCESS_KEY"
    if [[ -n "${NANIO_ACCESS_KEY:-}" && -n "${NANIO_SECRET_KEY:-}" ]]; then
        echo "export AWS_SECRET_ACCESS_KEY=\"\$NANIO_SECRET_KEY\""
    else
        echo "export AWS_SECRET_ACCESS_KEY=\"\$(sed -n 's/^NANIO_SECRET_KEY=//p' '$ENV_FILE')\""
    fi
    echo "export AWS_DEFAULT_REGION=us-east-1"
}

cmd_remote() {
    local dir="${1:-$PROJECT_DIR}"
    dir="$(cd "$dir" && pwd)" || die "no such directory: $1"
    load_credentials || die "no credentials yet: run '$0 up' first"
    configure_dvc_remote "$dir"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    remote) shift; cmd_remote "$@" ;;
    *) echo "usage: $0 up|down|status|env|remote [DIR]   (ports: S3_PORT, MLFLOW_PORT, PREFECT_PORT; state: STACK_DIR)" >&2
       exit 2 ;;
esac
