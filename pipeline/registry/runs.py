"""Who owns an MLflow run, and failing the runs whose owner died (kill -9, OOM kill, a lost machine).

A run stays RUNNING until the process that started it ends it; a process killed with SIGKILL never does. Every run
this project starts carries its owner as tags (host, pid, the process's start time), and the next register or
promotion marks FAILED — with a tag saying why — each RUNNING run that this host started and whose process is gone.
Runs of live processes, of other hosts, and runs without owner tags (started by other tools) are never touched.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from pipeline.core import clock, io

HOST_TAG = "mlops.owner.host"
PID_TAG = "mlops.owner.pid"
START_TAG = "mlops.owner.started"  # "<boot id>:<start time in clock ticks>" (Linux), or "unknown"
FAILED_TAG = "mlops.failed_reason"
UNKNOWN = "unknown"
_PROC = Path("/proc")


def _boot_id() -> str:
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return UNKNOWN


def process_start(pid: int) -> str | None:
    """An identity of process `pid`'s start ("<boot id>:<start ticks>"), UNKNOWN without /proc; None if none runs.

    The pid alone is not enough: after the owner died its pid may be reused by an unrelated process.
    """
    if not (_PROC / "self" / "stat").is_file():  # no procfs (macOS): the pid is all there is
        return UNKNOWN if io.pid_alive(pid) else None
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return UNKNOWN if io.pid_alive(pid) else None
    fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": field 3 (state) onwards; starttime is field 22
    return f"{_boot_id()}:{fields[19]}" if len(fields) > 19 else UNKNOWN


def host() -> str:
    """This machine's name, as recorded in HOST_TAG."""
    return socket.gethostname()


def owner_tags() -> dict[str, str]:
    """The run tags naming this process as the run's owner."""
    pid = os.getpid()
    return {HOST_TAG: host(), PID_TAG: str(pid), START_TAG: process_start(pid) or UNKNOWN}


def dangling_reason(
    status: str, tags: Mapping[str, str], this_host: str, probe: Callable[[int], str | None]
) -> str | None:
    """Why a run must be marked FAILED, or None to leave it alone.

    Only a RUNNING run whose owner tags name `this_host` qualifies, and only when `probe(pid)` (the owner pid's
    current start identity, None when no such process) says the owner is gone: no process with that pid, or one
    that started at another time (the pid was reused).
    """
    if status != "RUNNING" or tags.get(HOST_TAG) != this_host:
        return None
    try:
        pid = int(tags.get(PID_TAG, ""))
    except ValueError:
        return None
    now = probe(pid)
    if now is None:
        return f"its process (pid {pid} on {this_host}) is gone"
    started = tags.get(START_TAG, UNKNOWN)
    if UNKNOWN not in (started, now) and started != now:
        return f"its process (pid {pid} on {this_host}) is gone; the pid now belongs to another process"
    return None


def experiment_ids(client, names: Iterable[str]) -> list[str]:
    """The ids of those of the experiments `names` that exist."""
    found = (client.get_experiment_by_name(name) for name in names)
    return [exp.experiment_id for exp in found if exp is not None]


def fail_dangling(client, experiments: Iterable[str]) -> list[str]:
    """Mark FAILED every RUNNING run of `experiments` (ids) owned by a process of this host that is gone.

    Each gets FAILED_TAG (when, why, who marked it); the logged models it left PENDING are finalized FAILED.
    Returns the run ids marked.
    """
    ids, here = list(experiments), host()
    if not ids:
        return []
    running = client.search_runs(
        ids, filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{here}'", max_results=1000
    )
    marked = []
    for run in running:
        reason = dangling_reason(run.info.status, run.data.tags, here, process_start)
        if reason is None:
            continue
        note = f"{clock.utc_iso()}: {reason}; marked FAILED by pid {os.getpid()}"
        client.set_tag(run.info.run_id, FAILED_TAG, note)
        client.set_terminated(run.info.run_id, "FAILED")
        _fail_pending_models(client, run)
        marked.append(run.info.run_id)
    return marked


def _fail_pending_models(client, run) -> None:
    """Finalize as FAILED the logged models the dead run left PENDING (their upload never finished)."""
    from mlflow.exceptions import MlflowException

    try:
        models = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'", max_results=100
        )
    except MlflowException as exc:  # a tracking server older than MLflow 3 has no logged models
        if exc.error_code not in ("ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED", "BAD_REQUEST"):
            raise
        return
    for model in models:
        if str(model.status) in ("PENDING", "LoggedModelStatus.PENDING"):
            client.finalize_logged_model(model.model_id, "FAILED")


def owner_gone(run) -> bool:
    """True when `run` is RUNNING and its owner (on this host) is gone: nobody will end it."""
    return dangling_reason(run.info.status, run.data.tags, host(), process_start) is not None
