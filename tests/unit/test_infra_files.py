"""Static checks of infra/: the compose stack, the Kubernetes manifests and the Prefect GPU job template.

No container engine or cluster is needed. `docker compose config` runs when the compose plugin exists;
Kubernetes objects are validated against the bundled OpenAPI schemas of `kubernetes-validate` when it is
installed (it works offline), and structurally in every case.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra" / "compose" / "docker-compose.yml"
K8S = ROOT / "infra" / "k8s"
GPU_TEMPLATE = K8S / "prefect-gpu-base-job-template.json"
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
        assert STACK_NAMES <= set(env), f"{name} lacks {STACK_NAMES - set(env)}"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
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
            if "SECRET" in key or "PASSWORD" in key:
                assert str(value).startswith("${"), f"{name}: {key} must come from the env file"
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} must bind to 127.0.0.1 only"
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert ".env" in gitignore  # infra/compose/.env and infra/local/.env stay out of git


def test_docker_compose_config_accepts_the_file(tmp_path):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` plugin here: validated structurally by the tests above")
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--env-file",
                             str(COMPOSE.parent / ".env.example"), "--profile", "gpu", "config", "-q"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


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


@pytest.mark.skipif(kubernetes_validate is None, reason="kubernetes-validate not installed (structural checks ran)")
def test_k8s_objects_validate_against_the_kubernetes_schemas():
    for name, doc in _k8s_docs():
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
    for key, prop in variables["properties"].items():
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
    assert refs == {"mlops-s3", "mlops-s3-credentials"}
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
