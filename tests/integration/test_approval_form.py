"""The approval form in the Prefect UI, in a real browser: it cannot be submitted wrong, and waiting holds no process.

A real Prefect server (its UI told its API URL, on a port other than 4200) serves a drill flow that asks the
promotion flow's question with `flows.promotion.ask` — the same code, form and suspension as the promotion run —
from a served deployment. Headless Chromium opens the suspended run, presses Resume and submits: an empty form and
a blank name are refused by the form itself (the run stays suspended); an answer the flow refuses re-asks with
the reason in the next form; a good answer completes the run with exactly what was typed. The full promotion
(champion alias, audit, S3 pointer) through the same form is a step of tests/e2e/test_feedback_loop.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from flows import automations
from tests.helpers_browser import (
    browser,
    fill_approval,
    open_resume_form,
    page_text,
    screenshot,
    show_artifact,
    submit,
    wait_until,
)
from tests.helpers_project import ROOT, stop_group, tool_env
from tests.helpers_s3 import free_port

pytestmark = pytest.mark.integration
ZOMBIE_WINDOW = 10  # seconds (Prefect's minimum for a proactive trigger); the shipped file says 240

DRILL = """import json
import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.input import create_flow_run_input, read_flow_run_input

from flows.promotion import _refusal, ask


def refuse(model_name, answer):
    if answer.approver.strip() == "mallory":
        return "mallory may not approve demo-model"
    return _refusal(model_name, answer)


@flow(name="approval-drill")
def approval_drill(out: str, timeout_s: int = 600) -> None:
    if read_flow_run_input("drill-review") is None:  # once: a resumed run replays from the top
        table = "| | challenger | champion |\\n|---|---|---|\\n| test accuracy | 91.00% | 90.50% |"
        create_markdown_artifact(f"## Promotion review: demo-model\\n\\n{table}", key="promotion-review")
        create_flow_run_input("drill-review", True)
    answer = ask("demo-model", "7", time.time() + timeout_s, refuse)
    Path(out).write_text(json.dumps(answer.model_dump(include={"decision", "approver", "reason"})))


if __name__ == "__main__":
    approval_drill.serve(name="drill")
"""


def _wait(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def served_drill(tmp_path):
    """(UI base URL, API URL, tmp folder): a Prefect server and the served drill deployment."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = tool_env({"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api, "PREFECT_UI_API_URL": api,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": "2",
                    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
                    "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    (tmp_path / "drill.py").write_text(DRILL)
    procs = []

    def start(cmd: list[str], log: str) -> None:
        with open(tmp_path / log, "w") as out:  # the child keeps its own copy of the descriptor
            procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))

    try:
        start(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], "server.log")
        _wait(lambda: _healthy(f"{api}/health"), 90, "the Prefect server")
        start([sys.executable, "drill.py"], "serve.log")
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api}):
            # the shipped zombie automation (heartbeats stop → Crashed) with a 10 s window: a suspended run sends no
            # heartbeats, and must still not be taken for a dead one
            automations.apply([automations.ZOMBIE_FLOW_RUNS], within=ZOMBIE_WINDOW)
            yield f"http://127.0.0.1:{port}", api, tmp_path
    finally:
        for proc in reversed(procs):
            stop_group(proc)


def _state(flow_run_id):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def _start_drill(out) -> object:
    from prefect import get_client
    from prefect.deployments import run_deployment

    def deployed():
        with get_client(sync_client=True) as client:
            try:
                return client.read_deployment_by_name("approval-drill/drill")
            except Exception:  # noqa: BLE001 - not served yet
                return None

    _wait(deployed, 90, "the served drill deployment")
    return run_deployment("approval-drill/drill", parameters={"out": str(out)}, timeout=0, as_subflow=False).id


def _suspended(flow_run_id, after: float = 0.0):
    state = _state(flow_run_id)
    return state.is_paused() and state.name == "Suspended" and state.timestamp.timestamp() > after and state


def test_the_form_cannot_be_submitted_wrong_and_a_refused_answer_asks_again(served_drill):
    ui, _, tmp_path = served_drill
    out = tmp_path / "answer.json"
    flow_run_id = _start_drill(out)
    first = _wait(lambda: _suspended(flow_run_id), 120, "the drill run to suspend")
    _wait(lambda: f"Execution of flow run '{flow_run_id}' is paused" in (tmp_path / "serve.log").read_text(), 30,
          "the run's process to exit while it waits (no process is held)")
    started = time.monotonic()
    time.sleep(ZOMBIE_WINDOW + 6)
    assert _state(flow_run_id).name == "Suspended", "the zombie automation left the waiting run alone"
    with browser() as driver:
        review = show_artifact(driver, ui, flow_run_id, "promotion-review", expect="test accuracy")
        assert "Promotion review: demo-model" in review and "91.00%" in review and "|---|" not in review, review
        screenshot(driver, "prefect-promotion-review", tmp_path)
        modal = open_resume_form(driver, ui, flow_run_id)
        assert "Approve demo-model v7 as champion?" in modal.text and "(Optional)" not in modal.text
        screenshot(driver, "prefect-approval-form", tmp_path)

        submit(modal)  # untouched form: every field is required, the server is not even asked
        wait_until(driver, lambda: modal.text.count("is a required property") == 3, 20, "three 'required' errors")
        screenshot(driver, "prefect-approval-form-empty-submit", tmp_path)
        fill_approval(modal, "approve", "   ", "a reason")  # a blank name is no name
        submit(modal)
        refusal = "Validation failed for field 'approver'"  # the server checks the answer against the schema
        wait_until(driver, lambda: refusal in page_text(driver), 20, "the blank name refused by the server")
        screenshot(driver, "prefect-approval-form-blank-name", tmp_path)
        time.sleep(2)
        assert _state(flow_run_id).name == "Suspended", "a refused form never resumes the run"

        fill_approval(modal, "approve", "mallory", "I think so")  # valid for the form, refused by the flow
        submit(modal)
        second = _wait(lambda: _suspended(flow_run_id, first.timestamp.timestamp()), 120, "the run to ask again")
        modal = open_resume_form(driver, ui, flow_run_id)
        assert "Not applied: mallory may not approve demo-model." in modal.text, modal.text
        screenshot(driver, "prefect-approval-form-asks-again", tmp_path)

        fill_approval(modal, "reject", "alice", "not better than the champion")
        submit(modal)
        final = _wait(lambda: (s := _state(flow_run_id)).is_final() and s, 120, "the run to finish")
        assert final.is_completed(), f"{final.name}: {final.message}\n{page_text(driver)[-2000:]}"
    assert second.state_details.pause_key != first.state_details.pause_key
    answer = json.loads(out.read_text())
    assert answer == {"decision": "reject", "approver": "alice", "reason": "not better than the champion"}
    print(f"\n[browser] approval form: 2 refused forms, 1 re-ask, 1 decision in {time.monotonic() - started:.1f} s")
