"""Register stage: one MLflow run with params, metrics, plots and reports; a model version with lineage tags.

Only a version that evaluation blessed gets the `challenger` alias; `champion` is never touched here.
The model version is created only after every artifact is logged, so the registry never holds a version
without its files.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.core import io
from pipeline.core.config import Params
from pipeline.core.metrics import flatten, numeric_metrics

PIP_REQUIREMENTS = ["ai-edge-litert==2.3.0", "numpy==2.4.6", "mlflow==3.17.2"]


def lineage_tags(params: Params, manifest: dict, validation: dict, evaluation: dict) -> dict[str, str]:
    from pipeline.registry import store as registry

    tags = {
        **registry.git_commit(),
        **{f"dvc.{stage}": digest for stage, digest in registry.dvc_stage_hashes().items()},
        "data.dataset": manifest["dataset"],
        "data.manifest_checksum": manifest["checksum"],
        "data.gx_success": str(validation["success"]).lower(),
        "data.gx_expectations": f"{validation['statistics']['successful_expectations']}/"
                                f"{validation['statistics']['evaluated_expectations']}",
        "model.architecture": params.train.model,
        "model.deploy_variant": evaluation["decision"]["deploy_variant"],
        "eval.blessed": str(evaluation["decision"]["blessed"]).lower(),
        "eval.accuracy": str(evaluation["accuracy"]),
        "eval.failed_checks": ",".join(r["check"] for r in evaluation["decision"]["reasons"] if not r["passed"]) or "none",
    }
    return {k: str(v)[:5000] for k, v in tags.items()}


def _log_history(mlflow, history_csv: Path) -> None:
    if not history_csv.is_file():
        return
    with open(history_csv) as fh:
        for row in csv.DictReader(fh):
            step = int(row.pop("epoch"))
            mlflow.log_metrics({f"epoch.{k}": float(v) for k, v in row.items()}, step=step)


def _log_outputs(mlflow, folders: tuple[str, ...]) -> None:
    """Log the stage outputs; the GX data docs site (hundreds of static files) goes in as one zip."""
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        for folder in folders:
            root = Path(folder)
            if not root.is_dir():
                continue
            for path in sorted(root.iterdir()):
                if path.is_dir() and (path / "index.html").is_file():
                    archive = shutil.make_archive(str(Path(tmp) / path.name), "zip", path)
                    mlflow.log_artifact(archive, artifact_path=folder)
                elif path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=f"{folder}/{path.name}")
                else:
                    mlflow.log_artifact(str(path), artifact_path=folder)


def run(params: Params, params_path: Path, out_path: Path, *, data_dir: Path = Path("data/prepared"),
        model_path: Path = Path("models/model.keras"), compressed_dir: Path = Path("models/compressed")) -> dict:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from pipeline.registry import store as registry
    from pipeline.registry.pyfunc import TFLiteClassifier

    reg = params.register_
    stats = io.read_json(Path(data_dir) / "stats.json")
    manifest = io.read_json(Path(data_dir) / "manifest.json")
    validation = io.read_json("reports/validation.json")
    evaluation = io.read_json("reports/evaluation.json")
    train_metrics = io.read_json("metrics/train.json")
    compress_metrics = io.read_json("metrics/compress.json")
    variant = evaluation["decision"]["deploy_variant"]
    blessed = bool(evaluation["decision"]["blessed"])

    client = registry.client()
    experiment_id = registry.ensure_experiment(reg.experiment)
    tags = lineage_tags(params, manifest, validation, evaluation)
    shape = tuple(stats["image_shape"])
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape), "image")]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(stats["class_names"])))]))

    started = time.perf_counter()
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{params.train.model}-{tags['git_commit'][:8]}",
                          tags=tags) as run:
        mlflow.log_params(flatten("", params.model_dump(by_alias=True, mode="json")))
        mlflow.log_metrics({**numeric_metrics("train", train_metrics), **numeric_metrics("compress", compress_metrics),
                            **numeric_metrics("eval", {k: v for k, v in evaluation.items()
                                                       if k in ("accuracy", "variants", "per_class", "champion")})})
        _log_history(mlflow, Path("plots/train/history.csv"))
        _log_outputs(mlflow, ("plots", "reports", "metrics"))
        for file in (Path(params_path), Path("dvc.lock"), Path(data_dir) / "manifest.json"):
            if file.is_file():
                mlflow.log_artifact(str(file), artifact_path="lineage")
        with tempfile.TemporaryDirectory() as tmp:
            labels = Path(tmp) / "labels.json"
            labels.write_text(json.dumps(stats["class_names"]))
            info = mlflow.pyfunc.log_model(
                name="classifier", python_model=TFLiteClassifier(),
                artifacts={"tflite": str(Path(compressed_dir) / f"{variant}.tflite"), "labels": str(labels)},
                signature=signature, pip_requirements=PIP_REQUIREMENTS,
            )
        import keras

        mlflow.keras.log_model(keras.models.load_model(model_path), name="keras", pip_requirements=["keras==3.15.1"])
        version = mlflow.register_model(info.model_uri, reg.model_name, tags=tags)
        client.set_model_version_tag(reg.model_name, version.version, "source_run_id", run.info.run_id)
        alias = None
        if blessed:
            client.set_registered_model_alias(reg.model_name, "challenger", version.version)
            alias = "challenger"
        mlflow.set_tag("registered_version", version.version)

    record = {"model_name": reg.model_name, "version": int(version.version), "alias": alias, "blessed": blessed,
              "run_id": run.info.run_id, "model_uri": f"models:/{reg.model_name}/{version.version}",
              "experiment_id": experiment_id, "deploy_variant": variant,
              "logging_seconds": round(time.perf_counter() - started, 2)}
    io.write_json(out_path, record)
    return record
