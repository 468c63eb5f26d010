"""Who may approve, on a real `mlflow server --app-name basic-auth` (sqlite stores, a free port, default READ).

The pipeline's service identity is the MLflow admin (MLOPS_SERVICE_MLFLOW_*): it registers the model and writes
refusal audits. alice is granted MANAGE on the model (+ EDIT on its audit experiment), mallory keeps READ.
Decisions go through `mlops promote` / `mlops rollback` with each user's own MLFLOW_TRACKING_USERNAME/PASSWORD.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers_s3 import ROOT, free_port
from tests.reliability.common import answers_ok, cli, kill_group, start, subprocess_env, wait_for

pytestmark = pytest.mark.integration

_MODELS = (f"auth-clf-{n}" for n in itertools.count(1))  # one registered model per test
PASSWORDS = {"alice": "alice-" + secrets.token_hex(8), "mallory": "mallory-" + secrets.token_hex(8)}


class AuthServer:
    """`mlflow server --app-name basic-auth` in its own process group; admin = the pipeline's service identity."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.admin = ("mlops-service", "svc-" + secrets.token_hex(12))
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "basic_auth.ini"
        config.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 300\n"  # each request would otherwise hash the password again (~0.1-0.3 s)
        )
        env = subprocess_env({
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_USERNAME": self.admin[0],
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        })
        bin_dir = Path(ROOT / ".venv" / "bin")
        cmd = [str(bin_dir / "mlflow"), "server", "--app-name", "basic-auth",
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.log = root / "server.log"
        self.proc = start(cmd, root, env, self.log)

    def wait(self) -> None:
        wait_for(lambda: answers_ok(self.url + "/health"), 90, "the basic-auth MLflow server's /health", interval=0.2,
                 proc=self.proc, log=self.log)


def _as(monkeypatch, user: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


def _version(model: str, accuracy: float) -> str:
    """A blessed version (its run carries evaluation metrics) named `challenger`, registered by the service."""
    import mlflow

    from pipeline.registry import store

    client = store.client()
    experiment_id = store.ensure_experiment("auth-exp")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metrics({"eval.accuracy": accuracy, "eval.per_class.a.recall": accuracy})
    if not client.search_registered_models(f"name='{model}'"):
        client.create_registered_model(model)
    version = client.create_model_version(model, f"runs:/{run.info.run_id}/classifier", run.info.run_id,
                                          tags={"eval.blessed": "true", "model.deploy_variant": "int8"})
    client.set_registered_model_alias(model, "challenger", version.version)
    return str(version.version)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-auth")
    t0 = time.monotonic()
    srv = AuthServer(root)
    try:
        srv.wait()
        srv.started_in = time.monotonic() - t0  # type: ignore[attr-defined]
        yield srv
    finally:
        kill_group(srv.proc)


@pytest.fixture
def registry(server, tmp_path, monkeypatch):
    """The server with users alice (approver) and mallory (READ), and a champion v1 + blessed challenger v2;
    the service identity set, the current directory a temp dir (no git: the champion branch is left alone).
    """
    from mlflow.exceptions import RestException
    from mlflow.server.auth.client import AuthServiceClient

    from pipeline.registry import approvers, promotion

    model = next(_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLOPS_SERVICE_MLFLOW_USERNAME", server.admin[0])
    monkeypatch.setenv("MLOPS_SERVICE_MLFLOW_PASSWORD", server.admin[1])
    _as(monkeypatch, *server.admin)
    auth = AuthServiceClient(server.url)
    for user, password in PASSWORDS.items():
        with contextlib.suppress(RestException):  # the server is shared by this module's tests
            auth.create_user(user, password)
    v1 = _version(model, 0.90)
    promotion.approve(model, server.admin[0], "first champion")
    v2 = _version(model, 0.93)
    approvers.grant(model, "alice")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["register"]["model_name"] = model
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return {"model": model, "v1": v1, "v2": v2, "params": tmp_path / "params.yaml"}


def _refusals(model: str, user: str) -> list[dict]:
    from pipeline.registry import promotion

    return [r for r in promotion.history(model) if r["action"] == "refused" and r["by"] == user]


def test_only_an_approver_with_manage_decides_and_refusals_are_audited(server, registry, monkeypatch, figure):
    from pipeline.registry import promotion

    t0, model = time.monotonic(), registry["model"]
    before = {"champion": registry["v1"], "challenger": registry["v2"], "previous": None}
    assert promotion.aliases(model) == before

    # mallory (READ) approves, rejects, rolls back: refused, exit 2, nothing moves, each refusal audited
    _as(monkeypatch, "mallory", PASSWORDS["mallory"])
    for args in (["promote", "--approve"], ["promote", "--reject"], ["rollback"]):
        code, output = cli(*args, "--reason", "let me", "--params", registry["params"])
        assert code == 2, output
        assert f"'mallory' may not decide on {model}" in output and "needs MANAGE" in output, output
        assert "refusal audited" in output, output
    _as(monkeypatch, *server.admin)
    assert promotion.aliases(model) == before
    refused = _refusals(model, "mallory")
    assert [r["tried"]["action"] for r in refused] == ["approve", "reject", "rollback"]
    assert refused[0]["tried"]["aliases"] == before and refused[0]["tried"]["reason"] == "let me"

    # mallory cannot pass as alice: --by must be the authenticated user
    _as(monkeypatch, "mallory", PASSWORDS["mallory"])
    code, output = cli("promote", "--approve", "--by", "alice", "--params", registry["params"])
    assert code == 2 and "--by 'alice' is not the authenticated MLflow user 'mallory'" in output, output
    # a wrong password is no identity at all
    _as(monkeypatch, "alice", "not-her-password")
    code, output = cli("promote", "--approve", "--params", registry["params"])
    assert code == 2 and "rejected the credentials of user 'alice'" in output, output

    # alice (MANAGE) approves with her own credentials: recorded as alice (--by defaults to her)
    _as(monkeypatch, "alice", PASSWORDS["alice"])
    code, output = cli("promote", "--approve", "--reason", "better", "--params", registry["params"])
    assert code == 0, output
    assert "approve by alice" in output, output
    assert promotion.aliases(model) == {"champion": registry["v2"], "challenger": None, "previous": registry["v1"]}
    code, output = cli("rollback", "--by", "alice", "--reason", "drill", "--params", registry["params"])
    assert code == 0 and "rollback by alice" in output, output

    _as(monkeypatch, *server.admin)
    decisions = [(r["action"], r["by"]) for r in promotion.history(model) if r["action"] != "refused"]
    assert decisions[-2:] == [("approve", "alice"), ("rollback", "alice")]
    assert len(_refusals(model, "mallory")) == 4 and not _refusals(model, "alice")
    figure(f"approver auth: basic-auth server up in {server.started_in:.1f} s, CLI decisions "
           f"{time.monotonic() - t0:.1f} s")


def test_check_approver_accepts_managers_only(server, registry, monkeypatch):
    """The Prefect-form path: the worker (service identity) checks a typed name against MLflow's users."""
    from pipeline.core.errors import StageError
    from pipeline.registry import approvers, promotion

    model = registry["model"]
    approvers.check_approver(model, "alice")
    approvers.check_approver(model, server.admin[0])  # an admin manages everything
    for name, why in (("mallory", "'mallory' may not decide"), ("nobody", "'nobody' is not an MLflow user")):
        with pytest.raises(approvers.ApproverRefused, match=why):
            approvers.check_approver(model, name)
    assert _refusals(model, "mallory")[-1]["tried"]["action"] == "decide (Prefect form)"
    assert _refusals(model, "nobody")
    assert promotion.aliases(model)["challenger"] == registry["v2"]

    monkeypatch.delenv("MLOPS_SERVICE_MLFLOW_PASSWORD")
    with pytest.raises(StageError, match="no service identity"):
        approvers.check_approver(model, "alice")
