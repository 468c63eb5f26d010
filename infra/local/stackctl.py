"""The services of the local stack (infra/local/stack.sh) as one table, and the steps that need Python.

stack.sh runs this file with the project venv's python (stdlib only, except `buckets` and `dvc-remote`, which
use boto3 and DVC); it imports nothing from pipeline/. The table SERVICES is the single list `up`, `down` and
`status` read: name, label, port, pid file, command-line marker, stop grace period and health check.

    stackctl.py [STACK OPTIONS] status                 one line per service; exit 3 when any is down or sick
    stackctl.py [STACK OPTIONS] down                   stop every service this stack started, in reverse order
    stackctl.py [STACK OPTIONS] check-ports            refuse (exit 1) when a port we need is taken by a stranger
    stackctl.py [STACK OPTIONS] pid NAME               the pid of our running NAME (exit 1: not running)
    stackctl.py [STACK OPTIONS] running NAME           say "NAME: already running (pid N)" (exit 1: not running)
    stackctl.py [STACK OPTIONS] launch NAME DIR CMD…   start CMD in DIR in its own session; log and pid file
    stackctl.py [STACK OPTIONS] wait NAME              until NAME passes its health check; else log tail, exit 1
    stackctl.py [STACK OPTIONS] check NAME             NAME passes its health check now (exit 1 + message: not)
    stackctl.py buckets S3_URL NAME…                   create the missing buckets (credentials: AWS_* from env)
    stackctl.py dvc-remote DIR NAME URL ENDPOINT       remote NAME (default) in DIR/.dvc/config.local, mode 600;
                                                       keys from STACK_S3_KEY / STACK_S3_SECRET (never argv)
    stackctl.py [STACK OPTIONS] auth-env ENV_FILE MODE  auth on (STACK_AUTH=1): shell lines exporting the service
                                                       identity and the Prefect auth string, each read from
                                                       ENV_FILE (MODE up: first generated there, mode 600; up and
                                                       server: also the servers' settings; clients: `env`)

Every line printed starts with "stack.sh: ", as if the shell script had printed it. Secrets are never printed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling stack_services.py, also when loaded from a file

from stack_services import BY_NAME, SERVICES, Service, Stack, die, say

__all__ = ["BY_NAME", "SERVICES", "Service", "Stack", "main"]
REGION = "us-east-1"


# ------------------------------------------------------------------------------------- S3 and DVC (venv)


def create_buckets(endpoint: str, names: list[str]) -> int:
    """Create the buckets of `names` that the S3 server at `endpoint` lacks; report each one."""
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
    have = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    missing = [name for name in names if name not in have]
    for name in missing:
        s3.create_bucket(Bucket=name)
    say("S3 buckets: " + ", ".join(f"{n}{' (created)' if n in missing else ''}" for n in names))
    return 0


def configure_dvc_remote(root: Path, name: str, url: str, endpoint: str) -> int:
    """Same result as `dvc remote add --local -d -f NAME URL` + `dvc remote modify --local NAME endpointurl|
    access_key_id|secret_access_key …`, without the secret on any command line; config.local ends up mode 600.
    """
    from dvc.config import Config

    config = Config(dvc_dir=str(root / ".dvc"))
    with config.edit("local") as conf:
        conf["remote"][name] = {
            "url": url,
            "endpointurl": endpoint,
            "access_key_id": os.environ["STACK_S3_KEY"],
            "secret_access_key": os.environ["STACK_S3_SECRET"],
            "region": REGION,
        }
        conf["core"]["remote"] = name
    os.chmod(root / ".dvc" / "config.local", 0o600)
    say(f"DVC remote '{name}' (default, local config) -> {url} at {endpoint} in {root}")
    return 0


# ------------------------------------------------------------------------------------------------- auth

SERVICE_USER = "mlops-service"  # the MLflow admin = the pipeline's service identity (MLOPS_SERVICE_MLFLOW_*)
AUTH_SECRETS = {  # name in the env file -> how a missing one is generated (never printed)
    "MLOPS_SERVICE_MLFLOW_USERNAME": lambda: SERVICE_USER,
    "MLOPS_SERVICE_MLFLOW_PASSWORD": lambda: secrets.token_urlsafe(24),
    "MLFLOW_FLASK_SERVER_SECRET_KEY": lambda: secrets.token_urlsafe(32),
    "PREFECT_API_AUTH_STRING": lambda: f"mlops:{secrets.token_urlsafe(24)}",
}


def _env_file_values(path: Path) -> dict[str, str]:
    """NAME=value lines of the env file (stack.sh's env_value: optional `export `, quotes stripped; last wins)."""
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            name, sep, value = line.strip().removeprefix("export ").partition("=")
            if sep and name.strip():
                values[name.strip()] = value.strip().strip("'\"")
    return values


def auth_env(state: Path, env_file: Path, mode: str) -> int:
    """Print the shell lines that turn auth on for stack.sh (`up`, `status`) or a client shell (`env`).

    Every secret is read from the env file by the printed line itself (sed), never printed. MODE up generates the
    missing secrets into the file first (mode 600) and writes MLflow's auth config (default permission READ, users
    in <state>/mlflow/basic_auth.db) and a curl config holding the Prefect auth string (both mode 600).
    """
    if mode == "up":
        have = _env_file_values(env_file)
        missing = {name: make() for name, make in AUTH_SECRETS.items() if not have.get(name)}
        if missing:
            with open(os.open(env_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as out:
                out.write("# auth of the local stack (STACK_AUTH=1; generated by stackctl.py; keep private)\n")
                out.writelines(f"{name}={value}\n" for name, value in missing.items())
            say(f"auth: generated {', '.join(missing)} in {env_file} (mode 600)", err=True)
        os.chmod(env_file, 0o600)
    values = _env_file_values(env_file)
    lacking = [name for name in AUTH_SECRETS if not values.get(name)]
    if lacking:
        die(f"auth is on (STACK_AUTH=1) but {env_file} lacks {', '.join(lacking)}: run stack.sh up")
    quoted = shlex.quote(str(env_file))

    def read(name: str) -> str:
        return f"export {name}=\"$(sed -n 's/^{name}=//p' {quoted} | tail -n 1)\""

    lines = [
        read("MLOPS_SERVICE_MLFLOW_USERNAME"),
        read("MLOPS_SERVICE_MLFLOW_PASSWORD"),
        'export MLFLOW_TRACKING_USERNAME="$MLOPS_SERVICE_MLFLOW_USERNAME"',
        'export MLFLOW_TRACKING_PASSWORD="$MLOPS_SERVICE_MLFLOW_PASSWORD"',
        read("PREFECT_API_AUTH_STRING"),
    ]
    if mode in ("up", "server"):
        config, curl = state / "mlflow" / "basic_auth.ini", state / "run" / "prefect-auth.curl"
        if mode == "up":
            ini = (
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{(state / 'mlflow' / 'basic_auth.db').resolve()}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                "auth_cache_ttl_seconds = 60\n"  # else each request hashes the password again (~0.1-0.3 s)
            )
            for path, text in ((config, ini), (curl, f'user = "{values["PREFECT_API_AUTH_STRING"]}"\n')):
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
                    out.write(text)
        lines += [
            read("MLFLOW_FLASK_SERVER_SECRET_KEY"),
            'export PREFECT_SERVER_API_AUTH_STRING="$PREFECT_API_AUTH_STRING"',
            f"export MLFLOW_AUTH_CONFIG_PATH={shlex.quote(str(config))}",
            'export MLFLOW_AUTH_ADMIN_USERNAME="$MLOPS_SERVICE_MLFLOW_USERNAME"',
            'export MLFLOW_AUTH_ADMIN_PASSWORD="$MLOPS_SERVICE_MLFLOW_PASSWORD"',
            "AUTH_APP='--app-name basic-auth'",
            f"AUTH_CURL={shlex.quote(str(curl))}",
        ]
    print("\n".join(lines))
    return 0


# ------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stackctl.py", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--state", type=Path, default=Path(".stack"), help="the state dir (STACK_DIR)")
    parser.add_argument("--s3-port", type=int, default=9000)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--prefect-port", type=int, default=4200)
    parser.add_argument("--pool", default="mlops-process", help="the Prefect work pool (PREFECT_WORK_POOL)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds `wait` waits (STACK_TIMEOUT)")
    parser.add_argument("--prog", default="infra/local/stack.sh", help="the script's name, for messages")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("status", "down", "check-ports"):
        commands.add_parser(command)
    for command in ("pid", "running", "wait", "check", "launch"):
        sub = commands.add_parser(command)
        sub.add_argument("name", choices=list(BY_NAME))
        if command == "launch":
            sub.add_argument("dir")
            sub.add_argument("cmd", nargs=argparse.REMAINDER)
    buckets = commands.add_parser("buckets")
    buckets.add_argument("endpoint")
    buckets.add_argument("names", nargs="+")
    remote = commands.add_parser("dvc-remote")
    for arg in ("dir", "remote", "url", "endpoint"):
        remote.add_argument(arg)
    auth = commands.add_parser("auth-env")
    auth.add_argument("env_file", type=Path)
    auth.add_argument("mode", choices=("up", "server", "clients"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command (see the module docstring); returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "buckets":
        return create_buckets(args.endpoint, args.names)
    if args.command == "dvc-remote":
        return configure_dvc_remote(Path(args.dir), args.remote, args.url, args.endpoint)
    if args.command == "auth-env":
        return auth_env(args.state, args.env_file, args.mode)
    ports = {"S3_PORT": args.s3_port, "MLFLOW_PORT": args.mlflow_port, "PREFECT_PORT": args.prefect_port}
    stack = Stack(args.state, ports, args.pool, args.timeout, args.prog)
    if args.command in ("status", "down", "check-ports"):
        return {"status": stack.status, "down": stack.down, "check-ports": stack.check_ports}[args.command]()
    service = BY_NAME[args.name]
    if args.command in ("pid", "running"):
        pid = stack.running_pid(service)
        if pid is None:
            return 1
        if args.command == "pid":
            print(pid)
        else:
            say(f"{service.label}: already running (pid {pid})")
        return 0
    if args.command == "launch":
        return stack.launch(service, args.dir, args.cmd)
    return stack.wait(service) if args.command == "wait" else stack.check(service)


if __name__ == "__main__":
    sys.exit(main())
