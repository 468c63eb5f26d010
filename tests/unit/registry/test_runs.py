"""Dangling runs: a RUNNING run whose owner process (on this host) is gone is marked FAILED; nothing else is touched."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.registry import runs

HOST = "build-1"
ALIVE, OTHER_START = "boot:100", "boot:999"


def _probe(table: dict[int, str]):
    return lambda pid: table.get(pid)


def _tags(pid: int = 42, host: str = HOST, started: str = ALIVE) -> dict[str, str]:
    return {runs.HOST_TAG: host, runs.PID_TAG: str(pid), runs.START_TAG: started}


@pytest.mark.parametrize(
    ("status", "tags", "table", "dangling"),
    [
        ("RUNNING", _tags(), {}, True),  # no process with that pid
        ("RUNNING", _tags(), {42: OTHER_START}, True),  # the pid was reused by another process
        ("RUNNING", _tags(), {42: ALIVE}, False),  # the owner is alive: never touched
        ("RUNNING", _tags(started=runs.UNKNOWN), {42: ALIVE}, False),  # no start time recorded: pid alive is enough
        ("RUNNING", _tags(), {42: runs.UNKNOWN}, False),  # no procfs: pid alive is enough
        ("RUNNING", _tags(host="build-2"), {}, False),  # another host's run: its pids mean nothing here
        ("RUNNING", {}, {}, False),  # no owner tags (another tool's run)
        ("RUNNING", {runs.HOST_TAG: HOST, runs.PID_TAG: "x"}, {}, False),  # unreadable pid
        ("FINISHED", _tags(), {}, False),
        ("FAILED", _tags(), {}, False),
        ("KILLED", _tags(), {}, False),
    ],
)
def test_dangling_reason(status, tags, table, dangling):
    reason = runs.dangling_reason(status, tags, HOST, _probe(table))
    assert (reason is not None) == dangling, reason
    if dangling:
        assert "pid 42" in reason and HOST in reason and "gone" in reason


def test_process_start_identifies_a_live_process_and_none_once_it_is_gone():
    assert runs.process_start(os.getpid()) == runs.process_start(os.getpid()) is not None
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = runs.process_start(child.pid)
        assert started is not None and started != runs.process_start(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert runs.process_start(child.pid) is None
    assert runs.owner_tags()[runs.PID_TAG] == str(os.getpid())


def test_fail_dangling_marks_only_this_hosts_runs_whose_process_is_gone(mlflow_store):
    from pipeline.registry import store

    client = store.client()
    experiment = store.ensure_experiment("owners")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = {runs.HOST_TAG: runs.host(), runs.PID_TAG: str(child.pid), runs.START_TAG: runs.process_start(child.pid)}
    child.kill()
    child.wait()
    cases = {
        "dead owner": dead,
        "live owner": runs.owner_tags(),
        "other host": {**dead, runs.HOST_TAG: runs.host() + "-elsewhere"},
        "no owner": {},
    }
    ids = {name: client.create_run(experiment, tags=tags, run_name=name).info.run_id for name, tags in cases.items()}
    finished = client.create_run(experiment, tags=dead).info.run_id
    client.set_terminated(finished, "FINISHED")
    pending = client.create_logged_model(experiment, source_run_id=ids["dead owner"]).model_id  # upload cut short
    live_pending = client.create_logged_model(experiment, source_run_id=ids["live owner"]).model_id

    assert runs.fail_dangling(client, [experiment]) == [ids["dead owner"]]
    failed = client.get_run(ids["dead owner"])
    assert failed.info.status == "FAILED" and f"pid {child.pid}" in failed.data.tags[runs.FAILED_TAG]
    for name in ("live owner", "other host", "no owner"):
        assert client.get_run(ids[name]).info.status == "RUNNING", name
    assert client.get_run(finished).info.status == "FINISHED"
    assert str(client.get_logged_model(pending).status).endswith("FAILED")
    assert str(client.get_logged_model(live_pending).status).endswith("PENDING")
    assert runs.fail_dangling(client, [experiment]) == []  # idempotent
    assert runs.fail_dangling(client, []) == []
