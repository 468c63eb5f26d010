"""Static checks of infra/ and the lint set-up: the compose stack, the Kubernetes manifests, the Prefect GPU job
template, the local stack's script layout and service table, the shell scripts and the lint contracts.

No container engine, cluster or running service is needed. `docker compose config` runs when the compose plugin
exists; Kubernetes objects are validated against the bundled OpenAPI schemas of `kubernetes-validate` when it is
installed (it works offline), and structurally in every case; shellcheck runs where it is installed. The local
stack's service table is exercised against throwaway processes and a local HTTP server (the real stack:
tests/integration/test_stack.py).
"""

from __future__ import annotations

import ast
import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra" / "compose" / "docker-compose.yml"
K8S = ROOT / "infra" / "k8s"
GPU_TEMPLATE = K8S / "prefect-gpu-base-job-template.json"
LOCAL = ROOT / "infra" / "local"
ROOT_DEPLOYMENTS = ROOT / "prefect.yaml"
REMOTE_DEPLOYMENTS = ROOT / "infra" / "prefect-remote.yaml"  # the deployments of compose and k8s (a git token)
DOCKERFILE = ROOT / "infra" / "compose" / "Dockerfile"
GIT_CLONE = "prefect.deployments.steps.git_clone"
TOKEN_BLOCK = "mlops-git-token"  # the Prefect Secret block the pull step reads the git token from
SHELL_SCRIPTS = sorted({*ROOT.glob("infra/**/*.sh"), *ROOT.glob("bench/*.sh"), ROOT / ".ci" / "run"})
K8S_VERSION = "1.31"
STACK_NAMES = {"MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
               "AWS_SECRET_ACCESS_KEY"}

try:  # optional: JSON-schema validation of Kubernetes objects, offline (schemas ship in the wheel)
    import kubernetes_validate
except ImportError:  # pragma: no cover - depends on the environment
    kubernetes_validate = None


def _pinned(image: str) -> bool:
    """name:tag (not latest) or name@sha256:…; a registry port (host:5000/name) is not a tag."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


# ----------------------------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_the_services_and_they_depend_on_existing_ones(compose):
    services = compose["services"]
    assert set(services) >= {"minio", "minio-init", "postgres", "mlflow", "prefect-server", "prefect-setup",
                             "worker", "worker-gpu"}
    for name, svc in services.items():
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown service {dep}"
        if "build" in svc:
            build = svc["build"]
            context = (COMPOSE.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']} in {context}"
        else:
            assert _pinned(svc["image"]), f"{name}: image {svc['image']!r} is not pinned to a tag"


def test_compose_servers_use_postgres_and_proxied_s3_artifacts(compose):
    services = compose["services"]
    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"]) if isinstance(mlflow["command"], list) else mlflow["command"]
    assert "--artifacts-destination s3://mlflow-artifacts/" in command and "--serve-artifacts" in command
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    prefect = services["prefect-server"]
    assert prefect["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    init = " ".join(services["minio-init"]["command"])
    for bucket in ("dvc-store", "mlflow-artifacts", "models"):  # the buckets of the local stack
        assert f"stack/{bucket}" in init
    assert "CREATE DATABASE prefect" in (COMPOSE.parent / "postgres-init.sql").read_text()


def test_compose_workers_use_the_local_stack_variable_names_and_a_gpu_profile(compose):
    services = compose["services"]
    for name in ("worker", "worker-gpu"):
        env = services[name]["environment"]
        assert set(env) >= STACK_NAMES, f"{name} lacks {STACK_NAMES - set(env)}"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert "s3://dvc-store/" in env["MLOPS_DVC_REMOTE"]  # the DVC remote each fresh clone is given
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and "profiles" not in services["worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert gpu["build"]["args"]["TF_VARIANT"] == "gpu"
    assert "--pool" in gpu["command"] and gpu["command"][gpu["command"].index("--pool") + 1] == "mlops-gpu"


def test_compose_secrets_come_only_from_the_env_file(compose):
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", text))
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD"} <= required
    example = (COMPOSE.parent / ".env.example").read_text()
    defined = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, flags=re.M))
    assert required <= defined, f".env.example lacks {required - defined}"
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if "SECRET" in key or "PASSWORD" in key or "TOKEN" in key:
                assert str(value).startswith("${"), f"{name}: {key} must come from the env file"
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} must bind to 127.0.0.1 only"
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert ".env" in gitignore  # infra/compose/.env and infra/local/.env stay out of git


def test_compose_has_no_shared_workspace(compose):
    """Flow runs clone the git remote into a fresh directory: no workspace volume, no MLOPS_PROJECT_DIR."""
    text = COMPOSE.read_text()
    for name in ("MLOPS_PROJECT_DIR", "MLOPS_WORKSPACE", "/workspace", "MLOPS_UID"):
        assert name not in text, f"docker-compose.yml still names {name}"
    assert "MLOPS_WORKSPACE" not in (COMPOSE.parent / ".env.example").read_text()
    for name in ("worker", "worker-gpu", "prefect-setup"):
        assert not compose["services"][name].get("volumes"), f"{name} mounts a volume"
    assert "/workspace" not in DOCKERFILE.read_text()


def test_compose_setup_stores_the_git_token_and_deploys_the_remote_file(compose):
    setup = compose["services"]["prefect-setup"]
    command = " ".join(setup["command"])
    assert f".save('{TOKEN_BLOCK}', overwrite=True)" in command and "os.environ['GIT_TOKEN']" in command
    assert "deploy --prefect-file infra/prefect-remote.yaml --all" in command
    env = setup["environment"]
    assert env["MLOPS_GIT_REMOTE"].startswith("${MLOPS_GIT_REMOTE:?")  # required, from the env file
    assert env["GIT_TOKEN"].startswith("${GIT_TOKEN")
    # the image holds what the one-shots deploy from, in the directory they run in, and git for the clone
    dockerfile = DOCKERFILE.read_text()
    assert setup["working_dir"] == "/opt/mlops" and "WORKDIR /opt/mlops" in dockerfile
    for path in ("flows", "infra/prefect-remote.yaml", "infra/k8s/prefect-gpu-base-job-template.json"):
        assert re.search(rf"^COPY {re.escape(path)} ", dockerfile, flags=re.M), f"the image lacks {path}"
    assert re.search(r"apt-get install [^\n]*\bgit\b", dockerfile)


def test_docker_compose_config_accepts_the_file(tmp_path):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` plugin here: validated structurally by the tests above")
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--env-file",
                             str(COMPOSE.parent / ".env.example"), "--profile", "gpu", "config", "-q"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _auth_config(script: str, database_uri: str, tmp_path: Path, monkeypatch):
    """Run the part of an MLflow server command that writes its basic-auth config; MLflow's reading of that file."""
    from mlflow.server.auth.config import read_auth_config

    prefix = script.split("&& exec mlflow server", 1)[0]
    config = tmp_path / "auth" / "basic_auth.ini"
    env = {**os.environ, "MLFLOW_AUTH_DATABASE_URI": database_uri, "MLFLOW_AUTH_CONFIG_PATH": str(config)}
    subprocess.run(["sh", "-c", prefix], env=env, check=True)
    assert config.stat().st_mode & 0o077 == 0, "the auth config (a database URI with a password) is private"
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(config))
    return read_auth_config()


def test_compose_turns_auth_on(compose, tmp_path, monkeypatch):
    """MLflow runs its basic-auth app (admin = the service identity, default READ), Prefect requires its auth
    string, and every client of both carries the service identity (who may approve: infra/README.md)."""
    services = compose["services"]
    mlflow = services["mlflow"]
    script, env = mlflow["command"][-1], mlflow["environment"]
    assert "exec mlflow server --app-name basic-auth" in script
    assert env["MLFLOW_AUTH_CONFIG_PATH"].startswith("/") and env["MLFLOW_AUTH_DATABASE_URI"].endswith("/mlflow_auth")
    assert "CREATE DATABASE mlflow_auth;" in (COMPOSE.parent / "postgres-init.sql").read_text()
    for key, source in (("MLFLOW_AUTH_ADMIN_USERNAME", "MLOPS_SERVICE_MLFLOW_USERNAME"),
                        ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLOPS_SERVICE_MLFLOW_PASSWORD"),
                        ("MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_FLASK_SERVER_SECRET_KEY")):
        assert env[key].startswith("${" + source), (key, env[key])
    config = _auth_config(script.replace("$$", "$"), "postgresql://u:p@db/mlflow_auth", tmp_path, monkeypatch)
    assert config.default_permission == "READ" and config.database_uri == "postgresql://u:p@db/mlflow_auth"
    assert config.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"].startswith(
        "${PREFECT_API_AUTH_STRING:?")
    for name in ("worker", "worker-gpu", "prefect-setup"):
        assert services[name]["environment"]["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_API_AUTH_STRING:?"), name
    for name in ("worker", "worker-gpu"):  # the workers are the service: MLflow admin, refusal audits
        worker = services[name]["environment"]
        assert worker["MLFLOW_TRACKING_USERNAME"] == worker["MLOPS_SERVICE_MLFLOW_USERNAME"] == env[
            "MLFLOW_AUTH_ADMIN_USERNAME"]
        assert worker["MLFLOW_TRACKING_PASSWORD"] == worker["MLOPS_SERVICE_MLFLOW_PASSWORD"] == env[
            "MLFLOW_AUTH_ADMIN_PASSWORD"]


# ----------------------------------------------------------------------------------------------- k8s


def _k8s_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return [doc["spec"]["template"]["spec"]]
    return []


def test_k8s_objects_are_complete_pinned_and_resourced():
    docs = _k8s_docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "ServiceAccount", "Role",
            "RoleBinding"} <= kinds
    for name, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), name
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "mlops", f"{name}: {doc['kind']} without namespace"
        for spec in _pod_specs(doc):
            for container in spec["containers"]:
                where = f"{name}: {doc['metadata']['name']}/{container['name']}"
                assert _pinned(container["image"]), f"{where}: image not pinned"
                resources = container.get("resources") or {}
                assert resources.get("requests") and resources.get("limits"), f"{where}: resources not set"
                assert container.get("securityContext", {}).get("allowPrivilegeEscalation") is False, where
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted({n for n, _ in docs})


def test_k8s_references_resolve():
    docs = [d for _, d in _k8s_docs()]
    secrets = {d["metadata"]["name"]: set(d.get("stringData") or d.get("data") or {}) for d in docs
               if d["kind"] == "Secret"}
    configmaps = {d["metadata"]["name"]: set(d["data"]) for d in docs if d["kind"] == "ConfigMap"}
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    for doc in docs:
        for spec in _pod_specs(doc):
            if "serviceAccountName" in spec:
                assert spec["serviceAccountName"] in accounts
            for container in spec["containers"]:
                for env in container.get("env") or []:
                    ref = (env.get("valueFrom") or {})
                    if "secretKeyRef" in ref:
                        assert ref["secretKeyRef"]["key"] in secrets[ref["secretKeyRef"]["name"]], env
                    if "configMapKeyRef" in ref:
                        assert ref["configMapKeyRef"]["key"] in configmaps[ref["configMapKeyRef"]["name"]], env
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for svc in (d for d in docs if d["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        assert any(selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
                   for dep in deployments.values()), f"Service {svc['metadata']['name']} selects no pods"
    mlflow = deployments["mlflow"]["spec"]["template"]["spec"]["containers"][0]
    assert "--serve-artifacts" in " ".join(mlflow["args"])
    assert {"MLFLOW_BACKEND_STORE_URI", "AWS_SECRET_ACCESS_KEY"} <= {e["name"] for e in mlflow["env"]}
    assert STACK_NAMES - {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= configmaps["mlops-s3"]
    assert secrets["mlops-s3-credentials"] == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert {"MLOPS_DVC_REMOTE", "MLOPS_GIT_REMOTE"} <= configmaps["mlops-s3"]
    assert secrets["mlops-git"] == {"GIT_TOKEN"}


def test_k8s_setup_job_stores_the_git_token_and_deploys_the_remote_file():
    jobs = {d["metadata"]["name"]: d for _, d in _k8s_docs() if d["kind"] == "Job"}
    container = jobs["prefect-setup"]["spec"]["template"]["spec"]["containers"][0]
    script = " ".join(container["args"])
    assert f".save('{TOKEN_BLOCK}', overwrite=True)" in script and "os.environ['GIT_TOKEN']" in script
    assert "deploy --prefect-file infra/prefect-remote.yaml --all" in script
    assert "--base-job-template infra/k8s/prefect-gpu-base-job-template.json" in script
    assert container["workingDir"] == "/opt/mlops"
    env = {e["name"]: e for e in container["env"]}
    assert env["GIT_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "mlops-git", "key": "GIT_TOKEN"}
    assert env["MLOPS_GIT_REMOTE"]["valueFrom"]["configMapKeyRef"]["key"] == "MLOPS_GIT_REMOTE"
    assert env["MLOPS_WORK_POOL"]["value"] == "mlops-k8s-gpu"
    assert {"PREFECT_API_URL"} <= set(env)


def test_k8s_has_no_shared_workspace():
    for path in K8S.iterdir():
        assert "MLOPS_PROJECT_DIR" not in path.read_text(), path.name
    for _, doc in _k8s_docs():
        for spec in _pod_specs(doc):
            for volume in spec.get("volumes") or []:
                assert not {"persistentVolumeClaim", "hostPath", "nfs"} & set(volume), volume
    pod = _rendered_gpu_job()["spec"]["template"]["spec"]
    shared = [v for v in pod["volumes"] if not {"emptyDir"} >= set(v) - {"name"}]
    assert not shared, f"the flow-run pod mounts more than its own emptyDirs: {shared}"


@pytest.mark.skipif(kubernetes_validate is None, reason="kubernetes-validate not installed (structural checks ran)")
def test_k8s_objects_validate_against_the_kubernetes_schemas():
    for _name, doc in _k8s_docs():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError naming the field


# ----------------------------------------------------------------------------------------------- GPU pool


def _rendered_gpu_job(**overrides) -> dict:
    from prefect.utilities.templating import apply_values

    template = json.loads(GPU_TEMPLATE.read_text())
    props = template["variables"]["properties"]
    values = {k: v["default"] for k, v in props.items() if "default" in v}
    values.update({"name": "training-abc123", "command": "prefect flow-run execute", "env": {"X": "1"},
                   "labels": {"prefect.io/flow-run-id": "abc123"}, **overrides})
    return apply_values(template["job_configuration"]["job_manifest"], values)


def test_gpu_base_job_template_placeholders_are_declared_and_defaults_valid():
    import jsonschema
    from prefect.utilities.templating import find_placeholders

    template = json.loads(GPU_TEMPLATE.read_text())
    variables = template["variables"]
    jsonschema.Draft7Validator.check_schema(variables)
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    assert used <= set(variables["properties"]), f"undeclared: {used - set(variables['properties'])}"
    for prop in variables["properties"].values():
        if "default" in prop:
            jsonschema.validate(prop["default"], {k: v for k, v in prop.items() if k != "default"})
    assert variables["properties"]["gpu_count"]["minimum"] >= 1


def test_gpu_job_requests_the_gpus_and_reads_s3_settings_from_the_cluster():
    job = _rendered_gpu_job(gpu_count=2)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2  # extended resources: limit == request
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    refs = {next(iter(v.values()))["name"] for v in container["envFrom"]}
    assert refs == {"mlops-s3", "mlops-s3-credentials", "mlops-service"}
    # what the flow in the empty pod needs: the DVC remote of its clone, MLflow, S3 (the git token reaches the
    # pull step through the Prefect Secret block, not the pod's environment)
    docs = [d for _, d in _k8s_docs()]
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mlops-s3")["data"]
    assert {"MLOPS_DVC_REMOTE", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"} <= set(configmap)
    assert _pinned(container["image"])
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    if kubernetes_validate is not None:
        job = {**job, "metadata": {**job["metadata"], "name": "training-abc123"}}  # generateName is set later
        # what the Kubernetes worker does before submitting: env dict → list, command string → args list
        container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
        container["args"] = shlex.split(container["args"])
        # Prefect's Kubernetes worker insists on parallelism/completions under the *pod* spec (its base manifest
        # check rejects a template without them); Kubernetes defines them on the Job spec and drops them there.
        for key in ("parallelism", "completions"):
            job["spec"][key] = pod.pop(key)
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_k8s_turns_auth_on(tmp_path, monkeypatch):
    """The MLflow Deployment runs basic-auth (admin = the Secret mlops-service's user, default READ); the worker,
    the set-up Job and the flow-run Jobs carry the Prefect auth string (k8s runs no Prefect server of its own)."""
    docs = [d for _, d in _k8s_docs()]
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    assert {"MLOPS_SERVICE_MLFLOW_USERNAME", "MLOPS_SERVICE_MLFLOW_PASSWORD", "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"} == set(secrets["mlops-service"])
    service = secrets["mlops-service"]
    assert service["MLFLOW_TRACKING_USERNAME"] == service["MLOPS_SERVICE_MLFLOW_USERNAME"]
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if _pod_specs(d)}
    mlflow = pods["mlflow"]["containers"][0]
    script, env = " ".join(mlflow["args"]), {e["name"]: e for e in mlflow["env"]}
    assert "exec mlflow server --app-name basic-auth" in script
    refs = {name: env[name]["valueFrom"]["secretKeyRef"] for name in env if "secretKeyRef" in env[name].get(
        "valueFrom", {})}
    assert refs["MLFLOW_AUTH_ADMIN_USERNAME"] == {"name": "mlops-service", "key": "MLOPS_SERVICE_MLFLOW_USERNAME"}
    assert refs["MLFLOW_AUTH_ADMIN_PASSWORD"] == {"name": "mlops-service", "key": "MLOPS_SERVICE_MLFLOW_PASSWORD"}
    assert refs["MLFLOW_FLASK_SERVER_SECRET_KEY"]["name"] == refs["MLFLOW_AUTH_DATABASE_URI"]["name"] == "mlflow-backend"
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"].startswith("/")
    config = _auth_config(script, "postgresql://u:p@db/mlflow_auth", tmp_path, monkeypatch)
    assert config.default_permission == "READ" and config.database_uri.endswith("/mlflow_auth")
    for name in ("prefect-worker-gpu", "prefect-setup"):
        container_env = {e["name"]: e for e in pods[name]["containers"][0]["env"]}
        assert container_env["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == {
            "name": "mlops-service", "key": "PREFECT_API_AUTH_STRING"}, name
    job = _rendered_gpu_job()["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "mlops-service"}} in job["envFrom"]  # flow runs: MLflow + Prefect as the service


# ----------------------------------------------------------------------------------------------- deployments


def _deployments(path: Path) -> tuple[dict, dict]:
    config = yaml.safe_load(path.read_text())  # as `prefect deploy` reads it (PyYAML: anchors resolved)
    return config, {d["name"]: d for d in config["deployments"]}


def test_remote_deployments_are_the_root_deployments_with_a_token():
    root, root_deps = _deployments(ROOT_DEPLOYMENTS)
    remote, remote_deps = _deployments(REMOTE_DEPLOYMENTS)
    assert remote_deps.keys() == root_deps.keys()
    for name, dep in remote_deps.items():
        mine = {k: v for k, v in dep.items() if k != "work_pool"}
        theirs = {k: v for k, v in root_deps[name].items() if k != "work_pool"}
        assert mine == theirs, f"{name}: differs from prefect.yaml beyond its work pool"
        assert dep["parameters"]["remote"] == "origin"
        assert dep["work_pool"]["name"] == "{{ $MLOPS_WORK_POOL }}"
        assert "pull" not in dep and "pull" not in root_deps[name]  # the top-level pull applies to each
    (root_step,) = root["pull"]
    (remote_step,) = remote["pull"]
    clone = remote_step[GIT_CLONE]
    assert clone == {**root_step[GIT_CLONE], "access_token": f"{{{{ prefect.blocks.secret.{TOKEN_BLOCK} }}}}"}
    assert clone["repository"] == "{{ $MLOPS_GIT_REMOTE }}"


def test_remote_pull_step_keeps_the_token_reference_at_deploy_time(monkeypatch):
    """What `prefect deploy` stores (prefect/cli/deploy/_core.py: the pull steps get `apply_values` with the
    environment for `{{ $VAR }}`; block references are left for the pull step to resolve at run time)."""
    from prefect.utilities.templating import apply_values

    monkeypatch.setenv("MLOPS_GIT_REMOTE", "https://git.example.com/org/repo.git")
    (step,) = apply_values(yaml.safe_load(REMOTE_DEPLOYMENTS.read_text())["pull"], {}, remove_notset=False)
    assert step[GIT_CLONE]["repository"] == "https://git.example.com/org/repo.git"
    assert step[GIT_CLONE]["access_token"] == f"{{{{ prefect.blocks.secret.{TOKEN_BLOCK} }}}}"


def test_git_clone_puts_the_token_into_the_clone_url():
    """git_clone(access_token=...) → GitRepository(credentials={"access_token": ...}): the URL it clones, which
    stays the clone's `origin` (the flow fetches from and pushes to it)."""
    from prefect.runner.storage import GitRepository

    url = GitRepository(url="https://github.com/org/repo.git", credentials={"access_token": "t0k"})
    assert url._repository_url_with_credentials == "https://t0k@github.com/org/repo.git"
    assert GitRepository(url="file:///srv/repo.git", credentials={})._repository_url_with_credentials == (
        "file:///srv/repo.git")


# ----------------------------------------------------------------------------------------------- local stack


@pytest.fixture(scope="module")
def stackctl():
    """infra/local/stackctl.py, imported from its file (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("stackctl", LOCAL / "stackctl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _detached(marker: str) -> int:
    """A sleeping process in its own session that is not our child (as a service started by `up` is not
    stackctl's: its parent exits, init reaps it), so a stopped one does not linger as our zombie."""
    script = f'setsid "$0" -c "import time; time.sleep(120)" {marker} </dev/null >/dev/null 2>&1 & echo $!'
    pid = int(subprocess.run(["sh", "-c", script, sys.executable], capture_output=True, text=True,
                             check=True).stdout)
    for _ in range(100):  # until it is python itself (the forked sh and setsid have exec'd: no more exec windows)
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            if argv[0] == sys.executable and marker in argv:
                return pid
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not start")


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_stack_script_keeps_its_python_in_a_self_contained_module():
    script = (LOCAL / "stack.sh").read_text()
    assert not re.search(r"<<-?\s*'?PY", script), "stack.sh embeds Python again: it belongs in stackctl.py"
    assert not re.search(r"python\"?\s+-\s", script), "stack.sh runs Python from stdin"
    assert '"$HERE/stackctl.py"' in script
    assert len(script.splitlines()) < 300, "stack.sh grew past 300 lines: move logic into stackctl.py"
    for module, siblings in (("stackctl.py", {"stack_services"}), ("stack_services.py", set())):
        tree = ast.parse((LOCAL / module).read_text())
        top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
        top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
        anywhere = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        anywhere |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not anywhere & {"pipeline", "flows", "tests", "bench"}, f"{module} must not import project code"
        # status/down/check-ports run on a bare python3: the module level imports the standard library only
        assert top - {"__future__"} - siblings <= sys.stdlib_module_names, (module, top - sys.stdlib_module_names)
        assert anywhere - top <= {"boto3", "botocore", "dvc"}, (module, anywhere - top)


def test_service_table_keeps_the_state_layout_and_variables_of_the_stack(stackctl):
    table = {s.name: s for s in stackctl.SERVICES}
    # the order `up` starts them in (and `down` reverses); the pid files tests/helpers_stack.py reads
    assert list(table) == ["s3", "mlflow", "prefect-server", "worker"]
    assert {n: s.pid_file for n, s in table.items()} == {
        "s3": "s3/nanio.pid", "mlflow": "run/mlflow.pid", "prefect-server": "run/prefect-server.pid",
        "worker": "run/worker.pid"}
    assert [s.port_var for s in table.values()] == ["S3_PORT", "MLFLOW_PORT", "PREFECT_PORT", None]
    script = (LOCAL / "stack.sh").read_text()
    for service in table.values():
        assert service.marker and service.grace > 0 and service.probe in ("any", "ok", "pool"), service
        assert f"launch {service.name} " in script or service.name == "s3", f"stack.sh never starts {service.name}"
    assert "s3.sh\" start" in script  # S3: s3.sh starts nanio (and owns the credentials file), the table the rest


def test_stack_status_prints_one_line_per_row_of_the_service_table(stackctl, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_", "NANIO_", "STACK_", "S3_PORT"))}
    env.update({"STACK_DIR": str(tmp_path / "state"), "STACK_ENV_FILE": str(tmp_path / "cred.env"),
                "STACK_BIN": str(Path(sys.executable).parent), "S3_PORT": str(_free_port()),
                "MLFLOW_PORT": str(_free_port()), "PREFECT_PORT": str(_free_port())})
    result = subprocess.run([str(LOCAL / "stack.sh"), "status"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines() == [f"stack.sh: {s.label}: stopped" for s in stackctl.SERVICES]
    assert not (tmp_path / "cred.env").exists()  # status creates no credentials


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_status_and_down_read_the_table_and_signal_only_their_own_process_groups(stackctl, tmp_path, monkeypatch,
                                                                               capsys):
    service = stackctl.Service
    fake = (  # a healthy, a sick, a stopped service, and a stale pid file naming someone else's process
        service("ok", "Healthy thing", "MLFLOW_PORT", "run/ok.pid", "stackctl-test-marker", 2, "ok",
                "{mlflow}/health", "{mlflow}"),
        service("sick", "Sick thing", "PREFECT_PORT", "run/sick.pid", "stackctl-test-marker", 2, "ok",
                "{prefect}/health", "{prefect}"),
        service("gone", "Stopped thing", None, "run/gone.pid", "stackctl-test-marker", 2, "ok", "{s3}", "{s3}"),
        service("stale", "Stale thing", None, "run/stale.pid", "no-such-marker", 2, "ok", "{s3}", "{s3}"),
    )
    monkeypatch.setattr(sys.modules[stackctl.Stack.__module__], "SERVICES", fake)  # the table Stack reads
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    child = _detached("stackctl-test-marker")
    try:
        run = tmp_path / "run"
        run.mkdir()
        for name in ("ok", "sick"):
            (run / f"{name}.pid").write_text(f"{child}\n")
        (run / "stale.pid").write_text(f"{os.getpid()}\n")  # alive, but not ours: its command line lacks the marker
        ports = {"S3_PORT": _free_port(), "MLFLOW_PORT": server.server_address[1], "PREFECT_PORT": _free_port()}
        stack = stackctl.Stack(tmp_path, ports, "pool", 5, "stack.sh")
        mlflow, prefect = (f"http://127.0.0.1:{ports[v]}" for v in ("MLFLOW_PORT", "PREFECT_PORT"))

        assert stack.status() == 3
        assert capsys.readouterr().out.splitlines() == [
            f"stack.sh: Healthy thing: running (pid {child}) at {mlflow}",
            f"stack.sh: Sick thing: process {child} alive but {prefect}/health does not answer",
            "stack.sh: Stopped thing: stopped",
            "stack.sh: Stale thing: stopped",
        ]

        assert stack.down() == 0
        out = capsys.readouterr().out.splitlines()
        assert out[:3] == ["stack.sh: Stale thing: not running", "stack.sh: Stopped thing: not running",
                           f"stack.sh: Sick thing: stopped (pid {child})"]  # reverse order, SIGTERM sufficed
        assert out[3] == "stack.sh: Healthy thing: not running"  # the same group, already stopped
        assert out[4] == (f"stack.sh: note: port(s) {ports['MLFLOW_PORT']} still answer: "
                          "not a process this script started")  # our HTTP server: not in the table's groups
        assert _gone(child)
        assert not list(run.glob("*.pid"))
    finally:
        server.shutdown()
        if not _gone(child):
            os.killpg(child, signal.SIGKILL)


def test_wait_fails_with_the_log_tail_when_a_service_exits_during_start_up(stackctl, tmp_path, monkeypatch, capsys):
    service = stackctl.Service("flaky", "Flaky thing", None, "run/flaky.pid", "stackctl-test-marker", 2, "ok",
                               "{s3}/health", "{s3}")
    monkeypatch.setattr(sys.modules[stackctl.Stack.__module__], "SERVICES", (service,))
    (tmp_path / "run").mkdir()
    (tmp_path / "logs").mkdir()
    stack = stackctl.Stack(tmp_path, {"S3_PORT": _free_port(), "MLFLOW_PORT": 1, "PREFECT_PORT": 2}, "p", 30, "x")
    started = time.monotonic()
    stack.launch(service, str(tmp_path), [sys.executable, "-c", "print('boom'); raise SystemExit(3)",
                                          "stackctl-test-marker"])
    assert stack.wait(service) == 1
    assert time.monotonic() - started < 15
    err = capsys.readouterr().err
    assert "Flaky thing exited during start-up" in err and "boom" in err, err
    assert not (tmp_path / "run" / "flaky.pid").exists()


# ----------------------------------------------------------------------------------------------- lint set-up


def test_stack_auth_knob_generates_private_secrets_and_never_prints_them(tmp_path, monkeypatch):
    """STACK_AUTH=1: `stackctl.py auth-env` keeps the S3 keys, adds the service identity, the CSRF key and the
    Prefect auth string to the credentials file (mode 600), writes MLflow's auth config (default READ) and the curl
    config privately; what it prints reads each secret from the file: evaluated, the shell gets them."""
    from mlflow.server.auth.config import read_auth_config

    env_file, state = tmp_path / "cred.env", tmp_path / "state"
    env_file.write_text("NANIO_ACCESS_KEY=LOCALKEY\nNANIO_SECRET_KEY=s3-secret\n")

    def auth_env(mode: str) -> str:
        result = subprocess.run([sys.executable, str(LOCAL / "stackctl.py"), "--state", str(state), "auth-env",
                                 str(env_file), mode], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    printed = auth_env("up")
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert values["NANIO_SECRET_KEY"] == "s3-secret" and values["MLOPS_SERVICE_MLFLOW_USERNAME"] == "mlops-service"
    secrets = [values[k] for k in ("MLOPS_SERVICE_MLFLOW_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
                                   "PREFECT_API_AUTH_STRING")]
    assert all(len(v) >= 12 for v in secrets)  # MLflow refuses an admin password under 12 characters
    config, curl = state / "mlflow" / "basic_auth.ini", state / "run" / "prefect-auth.curl"
    for path in (env_file, config, curl):
        assert path.stat().st_mode & 0o077 == 0, path
    assert auth_env("up") == printed and env_file.read_text().count("MLOPS_SERVICE_MLFLOW_PASSWORD=") == 1
    clients = auth_env("clients")
    for text in (printed, clients):
        assert not any(secret in text for secret in secrets)
    script = f'set -euo pipefail; eval "$1"; {sys.executable} -c "import json, os; print(json.dumps(dict(os.environ)))"'
    shell = json.loads(subprocess.run(["bash", "-c", script, "-", printed], capture_output=True, text=True,
                                      check=True, env={"PATH": os.environ["PATH"]}).stdout)
    assert shell["MLFLOW_AUTH_ADMIN_PASSWORD"] == shell["MLFLOW_TRACKING_PASSWORD"] == secrets[0]
    assert shell["PREFECT_SERVER_API_AUTH_STRING"] == shell["PREFECT_API_AUTH_STRING"] == secrets[2]
    assert shell["MLFLOW_FLASK_SERVER_SECRET_KEY"] == secrets[1] and shell["MLFLOW_AUTH_CONFIG_PATH"] == str(config)
    assert {"MLOPS_SERVICE_MLFLOW_PASSWORD", "PREFECT_API_AUTH_STRING"} <= {
        line.split("=", 1)[0].removeprefix("export ") for line in clients.splitlines()}
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in clients  # a client shell gets no server settings
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(config))
    assert read_auth_config().default_permission == "READ"
    assert curl.read_text() == f'user = "{secrets[2]}"\n'
    script = (LOCAL / "stack.sh").read_text()
    assert "STACK_AUTH" in script.split("set -euo pipefail")[0], "the knob is documented in the header"
    assert "STACK_AUTH" in (ROOT / "infra" / "README.md").read_text()


def test_shell_scripts_pass_shellcheck():
    assert {LOCAL / "stack.sh", LOCAL / "s3.sh", ROOT / ".ci" / "run"} <= set(SHELL_SCRIPTS)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (make lint installs it from apt)")
    result = subprocess.run([shellcheck, *map(str, SHELL_SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_lints_before_it_tests_and_make_lint_runs_every_checker():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "set -euo pipefail" in ci
    assert ci.index("time make lint") < ci.index("time make test")
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\nlint:"):].split("\n\n")[0]
    for tool in ("ruff check", "ruff format --check", "mypy", "lint-imports", "shellcheck"):
        assert tool in recipe, f"make lint does not run {tool}"


def test_import_contracts_cover_every_subpackage_of_pipeline():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert set(config["root_packages"]) == {"pipeline", "flows"}
    contracts = {c["id"]: c for c in config["contracts"]}
    layered = {m.strip() for layer in contracts["layers"]["layers"] for m in layer.split("|")}
    ours = {f"pipeline.{p.parent.name}" for p in (ROOT / "pipeline").glob("*/__init__.py")}
    ours |= {f"pipeline.{p.stem}" for p in (ROOT / "pipeline").glob("*.py") if p.stem != "__init__"}
    assert ours | {"flows"} == layered, "a module of pipeline/ sits in no layer (or a layer names a missing one)"
    stages = {f"pipeline.stages.{p.stem}" for p in (ROOT / "pipeline" / "stages").glob("*.py") if p.stem != "__init__"}
    assert set(contracts["stages-independent"]["modules"]) == stages
