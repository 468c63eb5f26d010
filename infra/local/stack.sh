#!/usr/bin/env bash
# The local service stack, without Docker: S3 (nanio) + MLflow tracking server + Prefect server and worker.
#
#   infra/local/stack.sh up       start what is not running (idempotent), health-check it, configure DVC
#   infra/local/stack.sh down     stop exactly the processes this script started (each its own process group)
#   infra/local/stack.sh status   one line per service; exit 0 when all run and answer, 3 otherwise
#   infra/local/stack.sh env      the export lines a shell needs: `source <(infra/local/stack.sh env)`
#   infra/local/stack.sh remote [DIR]   (re)configure DIR's DVC remote for the stack (e.g. in a fresh clone)
#
# Services (127.0.0.1 only): S3 = nanio via infra/local/s3.sh (buckets dvc-store, mlflow-artifacts, models, incoming;
# S3_PORT=9000); `mlflow server` with artifacts proxied to s3://mlflow-artifacts/ (MLFLOW_PORT=5000);
# `prefect server start`, work pool mlops-process, the deployments of prefect.yaml and one process worker in an
# empty directory (PREFECT_PORT=4200); the git remote the flow runs clone and push to: a bare repository under
# STACK_DIR/git served over file:// (remote `stack` of the project; seeded with its branch). The services are
# one table, SERVICES in infra/local/stackctl.py, which `up`, `down` and `status` read (pid files, health
# checks); stackctl.py also creates the buckets and the DVC remote.
# State, logs and pid files live under STACK_DIR (default .stack/, git-ignored). Credentials: NANIO_ACCESS_KEY
# / NANIO_SECRET_KEY from the environment, else infra/local/.env (STACK_ENV_FILE; generated, mode 600, on
# the first `up`). The secret is never printed. Ports chosen at `up` are remembered for the other commands.
# More knobs: MLOPS_PROJECT_DIR (the workspace that seeds the git remote and gets the DVC remote; default this
# repo), STACK_BIN (the venv's bin), MLFLOW_WORKERS (2), MLFLOW_SERVER_EXTRA_ARGS, MLFLOW_BACKEND_STORE_URI
# (sqlite under the state dir), STACK_TIMEOUT (120 s per service), STACK_DVC_PREFIX (mlops-pipeline:
# s3://dvc-store/<prefix>), PREFECT_WORK_POOL (mlops-process), STACK_GIT_REMOTE_NAME (stack); Prefect server
# settings pass through the environment. STACK_AUTH=1: MLflow basic-auth + Prefect auth string. See infra/README.md.
# Zombie flow runs: the worker's flow runs send a heartbeat every PREFECT_FLOWS_HEARTBEAT_FREQUENCY s (30, the
# minimum Prefect accepts) and `up` applies the automations of infra/prefect/automations (python -m
# flows.automations; idempotent), which mark a Running flow run Crashed once its heartbeats stop.
# Approval notifications: MLOPS_APPROVAL_WEBHOOK_URL (a webhook receiving a JSON POST {text, subject, body}) makes
# `up` create the notification block custom-webhook/mlops-approval and apply the promotion automations (a run
# awaiting approval, a reminder, the decision, the timeout → rejection by "timeout", audited); unset, they are
# not applied and `up` says so. The URL is never printed; a changed URL is applied on the next `up`.
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
BUCKETS=(dvc-store mlflow-artifacts models incoming)
DVC_REMOTE=store
DVC_PREFIX="${STACK_DVC_PREFIX:-mlops-pipeline}"
TIMEOUT="${STACK_TIMEOUT:-120}"
HEARTBEAT="${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}"
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
AUTH="${STACK_AUTH:-$(recorded_port STACK_AUTH)}"; AUTH="${AUTH:-0}"
for var in S3_PORT MLFLOW_PORT PREFECT_PORT; do
    if ! [[ "${!var}" =~ ^[0-9]+$ ]] || (( ${!var} < 1 || ${!var} > 65535 )); then
        die "$var must be a port number, got '${!var}'"
    fi
done
export S3_PORT
S3_URL="http://$HOST:$S3_PORT"
MLFLOW_URL="http://$HOST:$MLFLOW_PORT"
PREFECT_API="http://$HOST:$PREFECT_PORT/api"
PREFECT_HOME_DIR="$STACK_DIR/prefect"
MLFLOW_BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STACK_DIR/mlflow/mlflow.db}"
GIT_REMOTE_DIR="$STACK_DIR/git/project.git"
GIT_REMOTE="file://$GIT_REMOTE_DIR"
GIT_REMOTE_NAME="${STACK_GIT_REMOTE_NAME:-stack}"
WORKER_DIR="$STACK_DIR/worker"

# --- the service table (stackctl.py; its service commands use only the standard library) ------------------
PYTHON="$BIN/python"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3 || echo python3)"  # `status`/`down` without the venv
ctl() {  # ctl COMMAND [NAME …]: stackctl.py for this stack (state dir, ports, pool, timeout)
    "$PYTHON" "$HERE/stackctl.py" --state "$STACK_DIR" --s3-port "$S3_PORT" --mlflow-port "$MLFLOW_PORT" \
        --prefect-port "$PREFECT_PORT" --pool "$POOL" --timeout "$TIMEOUT" --prog "$0" "$@"
}
auth_env() { local out; [[ "$AUTH" == 1 ]] || return 0; out="$(ctl auth-env "$ENV_FILE" "$1")"; eval "$out"; }

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

# --- pieces of `up` ---------------------------------------------------------------------------------------
prefect_env() {  # run a command with the client settings for the stack's Prefect server
    PREFECT_HOME="$PREFECT_HOME_DIR" PREFECT_API_URL="$PREFECT_API" PREFECT_SERVER_ANALYTICS_ENABLED=false \
        PREFECT_CLI_WRAP_LINES=false PATH="$BIN:$PATH" "$@"
}

server_ready() {  # server_ready NAME STARTED LABEL WHERE: wait for a server this `up` started at STARTED;
    local name="$1" started="$2"  # one that already ran must pass its health check now
    if [[ "$started" == no ]]; then ctl check "$name" || exit 1; return 0; fi
    ctl wait "$name" || exit 1
    say "$3: running (pid $(ctl pid "$name")) at $4 (answering after $(since "$started") s)"
}

configure_dvc_remote() {  # configure_dvc_remote DIR: the DVC remote `store` in DIR/.dvc/config.local
    local dir="$1"
    [[ -d "$dir/.dvc" ]] || { say "DVC remote: $dir is not a DVC repository; skipped"; return 0; }
    # The secret goes in through the environment (not argv, so no `ps` shows it) and lands only in
    # .dvc/config.local (mode 600), which DVC git-ignores.
    STACK_S3_KEY="$ACCESS_KEY" STACK_S3_SECRET="$SECRET_KEY" \
        "$BIN/python" "$HERE/stackctl.py" dvc-remote "$dir" "$DVC_REMOTE" "s3://dvc-store/$DVC_PREFIX" "$S3_URL"
}

git_remote() {  # the project's git remote: a bare repository served over file://, seeded with the project's HEAD
    local t0 branch
    t0="$(now)"
    git -C "$PROJECT_DIR" rev-parse --verify -q HEAD >/dev/null \
        || die "$PROJECT_DIR is not a git repository with a commit: runs are commits (git init && git commit first)"
    branch="$(git -C "$PROJECT_DIR" symbolic-ref --short -q HEAD || echo main)"
    if [[ ! -d "$GIT_REMOTE_DIR" ]]; then
        git init -q --bare "$GIT_REMOTE_DIR"
        git -C "$GIT_REMOTE_DIR" symbolic-ref HEAD "refs/heads/$branch"
    fi
    # the project's branch goes up when it fast-forwards; runs/* and champion are the pipeline's own
    git -C "$PROJECT_DIR" push -q "$GIT_REMOTE_DIR" "HEAD:refs/heads/$branch" 2>>"$LOGS/git.log" \
        || say "git: $branch on the stack remote has moved on (not a fast-forward of $PROJECT_DIR); left as is"
    git -C "$PROJECT_DIR" remote remove "$GIT_REMOTE_NAME" 2>/dev/null || true
    git -C "$PROJECT_DIR" remote add "$GIT_REMOTE_NAME" "$GIT_REMOTE"
    say "git: remote $GIT_REMOTE_NAME = $GIT_REMOTE (default branch $branch) ($(since "$t0") s)"
}

push_inputs() {  # the committed DVC inputs (raw dataset, accepted data) into the DVC remote: a clone can pull them
    local t0 files
    t0="$(now)"
    mapfile -t files < <(git -C "$PROJECT_DIR" ls-files '*.dvc')
    (( ${#files[@]} )) || return 0
    if (cd "$PROJECT_DIR" && PATH="$BIN:$PATH" dvc push -q "${files[@]}") >>"$LOGS/dvc-push.log" 2>&1; then
        say "DVC: pushed the committed inputs (${files[*]}) ($(since "$t0") s)"
    else
        say "DVC: could not push ${files[*]} (see $LOGS/dvc-push.log); run \`make dataset\` in $PROJECT_DIR, then up again"
    fi
}

deploy_prefect() {  # apply prefect.yaml unless the same file was already applied to this server
    local stamp="$RUN/deployed" want t0
    [[ -f "$PROJECT_DIR/prefect.yaml" ]] || { say "Prefect: no prefect.yaml in $PROJECT_DIR; no deployments"; return 0; }
    want="$PROJECT_DIR $PREFECT_PORT $GIT_REMOTE $(sha256sum "$PROJECT_DIR/prefect.yaml" | cut -d' ' -f1)"
    if [[ "$(cat "$stamp" 2>/dev/null)" == "$want" && "${1:-}" != force ]]; then
        say "Prefect: deployments from $PROJECT_DIR/prefect.yaml already applied"
        return 0
    fi
    t0="$(now)"
    if ! (cd "$PROJECT_DIR" && MLOPS_GIT_REMOTE="$GIT_REMOTE" prefect_env "$BIN/prefect" --no-prompt deploy --all) \
            >>"$LOGS/prefect-deploy.log" 2>&1; then
        echo "stack.sh: error: 'prefect deploy --all' failed; last lines of $LOGS/prefect-deploy.log:" >&2
        tail -n 25 "$LOGS/prefect-deploy.log" >&2
        exit 1
    fi
    echo "$want" >"$stamp"
    say "Prefect: deployments applied from $PROJECT_DIR/prefect.yaml ($(since "$t0") s)"
}

apply_automations() {  # the shipped automations (zombie flow runs → Crashed), unless applied to this server
    local stamp="$RUN/automations" want t0 out
    want="$PREFECT_PORT $( { cat "$ROOT"/infra/prefect/automations/*.yaml; printf '%s' "${MLOPS_APPROVAL_WEBHOOK_URL:-}"; } \
        | sha256sum | cut -d' ' -f1)"
    if [[ "$(cat "$stamp" 2>/dev/null)" == "$want" && "${1:-}" != force ]]; then
        say "Prefect: automations from $ROOT/infra/prefect/automations already applied"
        return 0
    fi
    t0="$(now)"
    if ! out="$(cd "$ROOT" && MLOPS_APPROVAL_WEBHOOK_URL="${MLOPS_APPROVAL_WEBHOOK_URL:-}" \
            prefect_env "$BIN/python" -m flows.automations 2>>"$LOGS/prefect-deploy.log")"; then
        tail -n 15 "$LOGS/prefect-deploy.log" >&2
        die "could not apply the Prefect automations of $ROOT/infra/prefect/automations"
    fi
    echo "$want" >"$stamp"
    while IFS= read -r line; do say "$line"; done <<<"$out"
    say "Prefect: automations applied ($(since "$t0") s)"
}

ensure_pool() {
    curl -fsS -o /dev/null -m 3 ${AUTH_CURL:+-K "$AUTH_CURL"} "$PREFECT_API/work_pools/$POOL" 2>/dev/null && return 0
    prefect_env "$BIN/prefect" work-pool create "$POOL" --type process >>"$LOGS/prefect-deploy.log" 2>&1 \
        || { tail -n 15 "$LOGS/prefect-deploy.log" >&2; die "could not create the work pool $POOL"; }
    say "Prefect: work pool $POOL (process) created"
}

# --- commands ---------------------------------------------------------------------------------------------
cmd_up() {
    local t_all t0 started_mlflow=no started_prefect=no extra=()
    t_all="$(now)"
    [[ -x "$BIN/mlflow" && -x "$BIN/prefect" && -x "$BIN/python" ]] \
        || die "$BIN has no mlflow/prefect/python: run 'make setup' first (or set STACK_BIN to a venv's bin)"
    command -v curl >/dev/null || die "curl is required"
    ctl check-ports || exit 1
    mkdir -p "$RUN" "$LOGS" "$STACK_DIR/mlflow" "$PREFECT_HOME_DIR"
    printf 'S3_PORT=%s\nMLFLOW_PORT=%s\nPREFECT_PORT=%s\nSTACK_AUTH=%s\n' "$S3_PORT" "$MLFLOW_PORT" "$PREFECT_PORT" "$AUTH" >"$PORTS_FILE"

    # 1. S3 (s3.sh is idempotent, generates the credentials file on first use)
    t0="$(now)"
    "$HERE/s3.sh" start >>"$LOGS/s3.log" 2>&1 || { tail -n 20 "$LOGS/s3.log" >&2; die "the S3 server did not start"; }
    load_credentials || die "no S3 credentials after s3.sh start"
    auth_env up
    say "S3: nanio running (pid $(ctl pid s3)) at $S3_URL, data in $STACK_DIR/s3 ($(since "$t0") s)"
    AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" AWS_DEFAULT_REGION=us-east-1 \
        "$BIN/python" "$HERE/stackctl.py" buckets "$S3_URL" "${BUCKETS[@]}"

    # 2. MLflow and Prefect servers start in parallel (MLflow takes 15-35 s to answer)
    if ! ctl running mlflow; then
        read -r -a extra <<<"${AUTH_APP:-} ${MLFLOW_SERVER_EXTRA_ARGS:-}"
        # Job execution (huey consumers for MLflow's GenAI jobs, ~1.7 GB RSS, slower start) is not used here.
        MLFLOW_S3_ENDPOINT_URL="$S3_URL" AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" \
            AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL="$S3_URL" \
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
            ctl launch mlflow "$STACK_DIR" "$BIN/mlflow" server --backend-store-uri "$MLFLOW_BACKEND" \
            --artifacts-destination s3://mlflow-artifacts/ --serve-artifacts \
            --host "$HOST" --port "$MLFLOW_PORT" --workers "${MLFLOW_WORKERS:-2}" ${extra[@]+"${extra[@]}"}
        started_mlflow="$(now)"
    fi
    if ! ctl running prefect-server; then
        # PREFECT_UI_API_URL: the UI (in the browser) calls the API on this port, not Prefect's default 4200
        PREFECT_HOME="$PREFECT_HOME_DIR" PREFECT_SERVER_ANALYTICS_ENABLED=false \
            PREFECT_UI_API_URL="${PREFECT_UI_API_URL:-$PREFECT_API}" \
            ctl launch prefect-server "$STACK_DIR" "$BIN/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
        started_prefect="$(now)"
    fi

    # 3. the DVC remote needs only S3, the git remote nothing: configure them while the servers boot
    configure_dvc_remote "$PROJECT_DIR"
    git_remote
    push_inputs
    server_ready prefect-server "$started_prefect" "Prefect server" "$PREFECT_API"

    # 4. work pool, deployments, worker (while MLflow still boots). The worker starts in an empty directory:
    #    each flow run clones the git remote (prefect.yaml pull step); it gets MLflow, S3 and the DVC remote.
    ensure_pool
    if [[ "$started_prefect" != no ]]; then deploy_prefect force; apply_automations force
    else deploy_prefect; apply_automations; fi
    if ! ctl running worker; then
        t0="$(now)"
        mkdir -p "$WORKER_DIR"
        MLOPS_DVC_REMOTE="s3://dvc-store/$DVC_PREFIX" MLFLOW_TRACKING_URI="$MLFLOW_URL" AWS_ENDPOINT_URL="$S3_URL" \
            AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" AWS_DEFAULT_REGION=us-east-1 \
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY="$HEARTBEAT" \
            prefect_env ctl launch worker "$WORKER_DIR" "$BIN/prefect" worker start --pool "$POOL" --type process
        ctl wait worker || exit 1
        say "Prefect worker: running (pid $(ctl pid worker)) in $WORKER_DIR, pool $POOL ready ($(since "$t0") s)"
    fi
    server_ready mlflow "$started_mlflow" "MLflow server" \
        "$MLFLOW_URL, backend ${MLFLOW_BACKEND%%:*}, artifacts s3://mlflow-artifacts/"
    say "stack up in $(since "$t_all") s. Use it: source <($0 env)"
}

cmd_env() {
    load_credentials || die "no credentials yet: run '$0 up' first (it generates $ENV_FILE)"
    echo "# the local stack (infra/local/stack.sh); the S3 secret is read from its file, never printed"
    echo "export MLFLOW_TRACKING_URI=$MLFLOW_URL"
    echo "export PREFECT_API_URL=$PREFECT_API"
    echo "export PREFECT_FLOWS_HEARTBEAT_FREQUENCY=$HEARTBEAT"
    echo "export AWS_ENDPOINT_URL=$S3_URL"
    echo "export AWS_ACCESS_KEY_ID=$ACCESS_KEY"
    if [[ -n "${NANIO_ACCESS_KEY:-}" && -n "${NANIO_SECRET_KEY:-}" ]]; then
        echo "export AWS_SECRET_ACCESS_KEY=\"\$NANIO_SECRET_KEY\""
    else
        echo "export AWS_SECRET_ACCESS_KEY=\"\$(sed -n 's/^NANIO_SECRET_KEY=//p' '$ENV_FILE')\""
    fi
    echo "export AWS_DEFAULT_REGION=us-east-1"
    echo "export MLOPS_GIT_REMOTE=$GIT_REMOTE"
    echo "export MLOPS_DVC_REMOTE=s3://dvc-store/$DVC_PREFIX"
}

cmd_remote() {
    local dir="${1:-$PROJECT_DIR}"
    dir="$(cd "$dir" && pwd)" || die "no such directory: $1"
    load_credentials || die "no credentials yet: run '$0 up' first"
    configure_dvc_remote "$dir"
}

case "${1:-}" in
    up) cmd_up ;;
    down) ctl down; rm -f "$RUN/deployed" "$RUN/automations" ;;
    status) auth_env server; ctl status ;;
    env) cmd_env; [[ "$AUTH" != 1 ]] || ctl auth-env "$ENV_FILE" clients ;;
    remote) shift; cmd_remote "$@" ;;
    *) echo "usage: $0 up|down|status|env|remote [DIR]   (ports: S3_PORT, MLFLOW_PORT, PREFECT_PORT; state: STACK_DIR)" >&2
       exit 2 ;;
esac
