"""The local stack's service table and the process handling that `up`, `down` and `status` share.

Used by stackctl.py (the command stack.sh runs); standard library only, nothing from pipeline/.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

HOST = "127.0.0.1"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP(S)_PROXY: all local


@dataclass(frozen=True)
class Service:
    """One process group of the stack, started by stack.sh (S3: by s3.sh) with setsid."""

    name: str  # logs/<name>.log; the argument of `pid`, `launch`, `wait`, ...
    label: str  # what messages call it; its first word names the port ("port 5000 (MLflow, MLFLOW_PORT)")
    port_var: str | None  # the variable of the port it listens on (None: no port of its own)
    pid_file: str  # under the state dir; holds the pid of the process-group leader
    marker: str  # the leader's command line contains it: a stale pid file never makes us signal a stranger
    grace: int  # `down`: seconds between SIGTERM and SIGKILL to the group
    probe: str  # health check: "any" HTTP answer at url, "ok" (2xx) at url, or work "pool" READY at url
    url: str  # the health check's URL: a template of the base URLs {s3}, {mlflow}, {prefect} and {pool}
    shown: str  # where `status` says it runs (same template; "" for the worker: it names its pool instead)


# fmt: off
SERVICES = (  # start order; `down` stops them in reverse
    #       name              label             port variable   pid file (state dir)      command-line marker   grace
    #       health check: probe and URL               status: "running (pid N) at <shown>"
    Service("s3",             "S3",             "S3_PORT",      "s3/nanio.pid",           "nanio",                10,
            "any",  "{s3}",                            "{s3}"),
    Service("mlflow",         "MLflow server",  "MLFLOW_PORT",  "run/mlflow.pid",         "mlflow server",         5,
            "ok",   "{mlflow}/health",                 "{mlflow}"),
    Service("prefect-server", "Prefect server", "PREFECT_PORT", "run/prefect-server.pid", "prefect server start", 15,
            "ok",   "{prefect}/api/health",            "{prefect}/api"),
    Service("worker",         "Prefect worker", None,           "run/worker.pid",         "prefect worker start", 15,
            "pool", "{prefect}/api/work_pools/{pool}", ""),
)
# fmt: on
BY_NAME = {service.name: service for service in SERVICES}


def say(message: str, err: bool = False) -> None:
    """Print as stack.sh does ("stack.sh: …"), on stdout or stderr."""
    print(f"stack.sh: {message}", file=sys.stderr if err else sys.stdout, flush=True)


def die(message: str) -> NoReturn:
    """stack.sh's `die`: the error on stderr, exit 1."""
    say(f"error: {message}", err=True)
    raise SystemExit(1)


class Stack:
    """The stack of one state dir on the given ports (what stack.sh resolved them to)."""

    def __init__(self, state: Path, ports: dict[str, int], pool: str, timeout: float, prog: str):
        self.state, self.ports, self.pool, self.timeout, self.prog = state, ports, pool, timeout, prog

    def url(self, template: str) -> str:
        """A URL template of the table, filled in for this stack."""
        bases = {name: f"http://{HOST}:{self.ports[f'{name.upper()}_PORT']}" for name in ("s3", "mlflow", "prefect")}
        return template.format(pool=self.pool, **bases)

    def pid_file(self, service: Service) -> Path:
        """Where the service's pid file lives."""
        return self.state / service.pid_file

    def log(self, service: Service) -> Path:
        """The service's log (nanio's is written by s3.sh: .stack/logs/s3.log holds s3.sh's output)."""
        return self.state / "logs" / f"{service.name}.log"

    def running_pid(self, service: Service) -> int | None:
        """The pid in the service's pid file if that process is alive and is ours (its marker), else None."""
        try:
            text = self.pid_file(service).read_text().strip()
            if not text.isdigit():
                return None
            pid = int(text)
            os.kill(pid, 0)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            return None
        return pid if service.marker in cmdline else None

    def healthy(self, service: Service) -> bool:
        """The service's health check: an HTTP answer / a 2xx answer / its work pool READY. With auth on
        (PREFECT_API_AUTH_STRING, STACK_AUTH=1) a request to the Prefect API carries the auth string.
        """
        url, headers = self.url(service.url), {}
        auth = os.environ.get("PREFECT_API_AUTH_STRING")
        if auth and url.startswith(self.url("{prefect}/")):
            headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        try:
            with _DIRECT.open(urllib.request.Request(url, headers=headers), timeout=3) as response:
                body = response.read()
        except urllib.error.HTTPError:
            return service.probe == "any"  # nanio answers unsigned requests with 403: it runs
        except (OSError, ValueError):
            return False
        if service.probe == "pool":
            try:
                return json.loads(body).get("status") == "READY"
            except ValueError:
                return False
        return True

    def where(self, service: Service, ok: bool) -> str:
        """What `status` adds after the pid: where it answers, or what fails."""
        if service.probe == "pool":
            return f", pool {self.pool} {'ready' if ok else 'not ready'}"
        return f" at {self.url(service.shown)}" if ok else f" but {self.url(service.url)} does not answer"

    def port_open(self, port: int) -> bool:
        """Something accepts TCP connections on HOST:port."""
        try:
            with socket.create_connection((HOST, port), timeout=2):
                return True
        except OSError:
            return False

    def stop(self, service: Service, grace: int | None = None, err: bool = False) -> None:
        """SIGTERM the service's whole process group; SIGKILL what is left after the grace period."""
        grace = service.grace if grace is None else grace
        pid = self.running_pid(service)
        if pid is None:
            self.pid_file(service).unlink(missing_ok=True)
            say(f"{service.label}: not running", err)
            return
        _signal_group(pid, signal.SIGTERM)
        if _wait_gone(pid, grace):
            say(f"{service.label}: stopped (pid {pid})", err)
        else:
            _signal_group(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
            say(f"{service.label}: stopped (pid {pid}; SIGKILL after {grace}s)", err)
        self.pid_file(service).unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------- commands

    def status(self) -> int:
        """One line per service; 0 when every one runs and passes its health check, else 3."""
        rc = 0
        for service in SERVICES:
            pid = self.running_pid(service)
            if pid is None:
                say(f"{service.label}: stopped")
                rc = 3
            elif self.healthy(service):
                say(f"{service.label}: running (pid {pid}){self.where(service, True)}")
            else:
                say(f"{service.label}: process {pid} alive{self.where(service, False)}")
                rc = 3
        return rc

    def down(self) -> int:
        """Stop every service, last started first; note ports that still answer (not ours)."""
        for service in reversed(SERVICES):
            self.stop(service)
        busy = [str(self.ports[s.port_var]) for s in SERVICES if s.port_var and self.port_open(self.ports[s.port_var])]
        if busy:
            say(f"note: port(s) {' '.join(busy)} still answer: not a process this script started")
        return 0

    def check_ports(self) -> int:
        """Refuse before anything starts: a port taken by a process that is not ours, or a running stack asked
        for other ports than it runs on.
        """
        with_port = [s for s in SERVICES if s.port_var]
        if any(self.running_pid(s) for s in with_port):
            recorded = _recorded_ports(self.state / "run" / "ports")
            for var, port in self.ports.items():
                if recorded.get(var) and recorded[var] != str(port):
                    die(
                        f"the stack in {self.state} runs with {var}={recorded[var]}; "
                        f"run '{self.prog} down' before changing ports"
                    )
        busy = [
            f"{self.ports[s.port_var]} ({s.label.split()[0]}, {s.port_var})"
            for s in with_port
            if s.port_var and self.running_pid(s) is None and self.port_open(self.ports[s.port_var])
        ]
        for taken in busy:
            say(f"error: port {taken} on {HOST} is already in use by another process", err=True)
        if busy:
            say(
                "nothing was started. Stop that process or choose free ports, e.g. "
                f"S3_PORT=9100 MLFLOW_PORT=5100 PREFECT_PORT=4300 {self.prog} up",
                err=True,
            )
            return 1
        if len(set(self.ports.values())) < len(self.ports):
            die(f"S3_PORT, MLFLOW_PORT and PREFECT_PORT must differ ({', '.join(str(p) for p in self.ports.values())})")
        return 0

    def launch(self, service: Service, workdir: str, command: list[str]) -> int:
        """Start the command in its own session (process group) with this environment; pid file and log."""
        log = self.log(service)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with log.open("ab") as out:
            out.write(f"--- {stamp} start: {' '.join(command)}\n".encode())
            out.flush()
            process = subprocess.Popen(
                command,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file(service).write_text(f"{process.pid}\n")
        return 0

    def wait(self, service: Service) -> int:
        """Poll the health check until it passes; a service that exits or stays silent fails with its log tail
        (and is stopped, when it still runs).
        """
        what = f"report to work pool {self.pool}" if service.probe == "pool" else f"answer on {self.url(service.url)}"
        deadline = time.monotonic() + self.timeout
        while not self.healthy(service):
            if self.running_pid(service) is None:
                say(f"{service.label} exited during start-up; last lines of {self.log(service)}:", err=True)
                self.pid_file(service).unlink(missing_ok=True)
                return _tail(self.log(service), 25)
            if time.monotonic() >= deadline:
                say(
                    f"{service.label} did not {what} within {self.timeout:g}s (STACK_TIMEOUT); stopping it. "
                    f"Last lines of {self.log(service)}:",
                    err=True,
                )
                _tail(self.log(service), 25)
                self.stop(service, grace=5, err=True)
                return 1
            time.sleep(0.5)
        return 0

    def check(self, service: Service) -> int:
        """The service (running already) passes its health check; else say what fails."""
        if self.healthy(service):
            return 0
        say(
            f"error: {service.label} (pid {self.running_pid(service)}) runs{self.where(service, False)}; "
            f"see {self.log(service)}",
            err=True,
        )
        return 1


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(OSError):  # already gone
        os.killpg(pid, sig)


def _wait_gone(pgid: int, seconds: float) -> bool:
    """Wait until no process of the group is left (True) or the time is up (False)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            os.killpg(pgid, 0)
        except OSError:  # ESRCH: gone (EPERM: not ours to signal, so not ours to wait for)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


def _recorded_ports(path: Path) -> dict[str, str]:
    """The ports file of a running stack (VAR=port lines; the last one wins)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _tail(path: Path, n: int) -> int:
    """The last n lines of a log on stderr; returns 1 (the exit status of a failed start)."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        lines = []
    print("\n".join(lines), file=sys.stderr, flush=True)
    return 1
