"""The local service stack (infra/local/stack.sh) driven from tests: isolated ports, state dir and credentials."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers_project import tool_env
from tests.helpers_s3 import free_port

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "infra" / "local" / "stack.sh"
SERVICES = ("mlflow", "prefect-server", "worker")


def _clean_env(extra: dict | None = None) -> dict:
    """tool_env without any MLflow/Prefect/AWS/stack settings of the calling shell."""
    drop = ("MLFLOW_", "PREFECT_", "AWS_", "NANIO_", "STACK_", "S3_PORT", "MLOPS_PROJECT_DIR")
    env = {k: v for k, v in tool_env().items() if not k.startswith(drop)}
    env.update(extra or {})
    return env


def _distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class Stack:
    """One isolated stack serving the workspace `work`."""

    def __init__(self, base: Path, work: Path, extra_env: dict | None = None):
        self.base, self.work = base, work
        self.state = base / "state"
        self.cred_file = base / "cred.env"
        self.s3_port, self.mlflow_port, self.prefect_port = _distinct_free_ports(3)
        self.env = _clean_env({
            "STACK_DIR": str(self.state), "STACK_ENV_FILE": str(self.cred_file), "MLOPS_PROJECT_DIR": str(work),
            "STACK_BIN": str(Path(sys.executable).parent),
            "S3_PORT": str(self.s3_port), "MLFLOW_PORT": str(self.mlflow_port),
            "PREFECT_PORT": str(self.prefect_port),
            "PREFECT_UI_ENABLED": "false", "MLFLOW_WORKERS": "1",
            # the deployments' cron schedules must not fire runs against the test workspace
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            **(extra_env or {}),
        })
        self.outputs: list[str] = []  # everything the script printed: checked for the secret

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def sh(self, *args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        result = subprocess.run([str(STACK), *args], env={**self.env, **(env or {})}, capture_output=True,
                                text=True, timeout=timeout)
        self.outputs += [result.stdout, result.stderr]
        return result

    def up(self) -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        result = self.sh("up")
        elapsed = time.monotonic() - started
        assert result.returncode == 0, f"stack.sh up failed:\n{result.stdout}\n{result.stderr}\n{self.logs()}"
        return result, elapsed

    def logs(self) -> str:
        out = []
        for log in sorted((self.state / "logs").glob("*.log")):
            out.append(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")
        return "\n".join(out)

    def pid(self, name: str) -> int | None:
        path = self.state / ("s3/nanio.pid" if name == "nanio" else f"run/{name}.pid")
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def git_remote(self) -> Path:
        """The bare repository the stack serves as the project's git remote."""
        return self.state / "git" / "project.git"

    @property
    def worker_dir(self) -> Path:
        """The (empty) directory the stack's Prefect worker runs in."""
        return self.state / "worker"

    def pids(self) -> dict[str, int | None]:
        return {name: self.pid(name) for name in ("nanio", *SERVICES)}

    def credentials(self) -> tuple[str, str]:
        values = dict(line.split("=", 1) for line in self.cred_file.read_text().splitlines()
                      if "=" in line and not line.startswith("#"))
        return values["NANIO_ACCESS_KEY"], values["NANIO_SECRET_KEY"]

    def client_env(self) -> dict[str, str]:
        """What `source <(stack.sh env)` gives a shell."""
        names = ["MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "MLOPS_GIT_REMOTE", "MLOPS_DVC_REMOTE"]
        script = ('set -euo pipefail; source <("$0" env); "$1" -c '
                  '"import json, os, sys; print(json.dumps({k: os.environ[k] for k in sys.argv[1:]}))" "${@:2}"')
        result = subprocess.run(["bash", "-c", script, str(STACK), sys.executable, *names], env=self.env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def s3(self):
        import boto3
        from botocore.config import Config

        key, secret = self.credentials()
        return boto3.client("s3", endpoint_url=self.s3_url, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name="us-east-1", config=Config(s3={"addressing_style": "path"},
                                                                   retries={"max_attempts": 1}))

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def run(self, cmd: list[str], cwd: Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        """A pipeline command as a user would run it: only the MLflow/Prefect client settings, no S3 keys."""
        client = {"MLFLOW_TRACKING_URI": self.mlflow_url,
                  "PREFECT_API_URL": f"http://127.0.0.1:{self.prefect_port}/api"}
        return subprocess.run(cmd, cwd=cwd or self.work, env=_clean_env({**client, **(env or {})}),
                              capture_output=True, text=True, timeout=timeout)
