"""Register stage: one MLflow run with params, metrics, plots and reports; a model version with lineage tags.

The version gets no alias here: `challenger` follows once the run is a pushed commit (pipeline.versioning).
The model version is created only after every artifact is logged, so the registry never holds a version
without its files. Command: `python -m pipeline.stages.register` (what dvc.yaml runs) or `mlops register`.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated

import numpy as np
import typer

from pipeline.core import io
from pipeline.core.command import DEFAULT_PARAMS, ParamsOpt, call, load, path_or
from pipeline.core.config import Params, PathsConfig
from pipeline.core.metrics import flatten, numeric_metrics, text_tags

PIP_REQUIREMENTS = ["ai-edge-litert==2.3.0", "numpy==2.4.6", "mlflow==3.17.2"]


def experiment_tags(env: Mapping[str, str]) -> dict[str, str]:
    """`experiment`: the DVC experiment's name (`dvc exp run`, --temp, --queue) or `none`; and its baseline commit."""
    name = env.get("DVC_EXP_NAME")
    if not name:
        return {"experiment": "none"}
    return {"experiment": name, "experiment.baseline": env.get("DVC_EXP_BASELINE_REV") or "unknown"}


def lineage_tags(params: Params, manifest: dict, validation: dict, evaluation: dict) -> dict[str, str]:
    """Version tags tying the model to its code, data, validation, evaluation and DVC experiment (the lineage)."""
    from pipeline.registry import store

    tags = {
        # the commit the run started from; `git_commit`/`git_dirty=false` come from the run's own pushed commit
        **{f"git.base_{key.removeprefix('git_')}": value for key, value in store.git_commit().items()},
        **experiment_tags(os.environ),
        **{f"dvc.{stage}": digest for stage, digest in store.dvc_stage_hashes().items()},
        "data.dataset": manifest["dataset"],
        "data.manifest_checksum": manifest["checksum"],
        "data.gx_success": str(validation["success"]).lower(),
        "data.gx_expectations": f"{validation['statistics']['successful_expectations']}/"
        f"{validation['statistics']['evaluated_expectations']}",
        "model.architecture": params.train.model,
        "model.deploy_variant": evaluation["decision"]["deploy_variant"],
        "eval.blessed": str(evaluation["decision"]["blessed"]).lower(),
        "eval.accuracy": str(evaluation["accuracy"]),
        "eval.failed_checks": ",".join(r["check"] for r in evaluation["decision"]["reasons"] if not r["passed"])
        or "none",
    }
    return {k: str(v)[:5000] for k, v in tags.items()}


def _log_history(mlflow, history_csv: Path) -> None:
    """Per-epoch training curves as stepped MLflow metrics (epoch.accuracy, epoch.val_loss, ...)."""
    if not history_csv.is_file():
        return
    with open(history_csv) as fh:
        for row in csv.DictReader(fh):
            step = int(row.pop("epoch"))
            mlflow.log_metrics({f"epoch.{k}": float(v) for k, v in row.items()}, step=step)


def _stage_outputs(paths: PathsConfig) -> list[tuple[Path, str]]:
    """Every stage output logged with the run, and the artifact folder it goes to."""
    return [
        (Path(paths.train_metrics), "metrics"),
        (Path(paths.compress_metrics), "metrics"),
        (Path(paths.evaluate_metrics), "metrics"),
        (Path(paths.validation_report), "reports"),
        (Path(paths.evaluation_report), "reports"),
        (Path(paths.data_docs), "reports"),
        (Path(paths.train_plots), "plots/train"),
        (Path(paths.evaluate_plots), "plots/evaluate"),
    ]


def _log_outputs(mlflow, outputs: list[tuple[Path, str]]) -> None:
    """Log the stage outputs; the GX data docs site (hundreds of static files) goes in as one zip."""
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        for path, folder in outputs:
            if path.is_dir() and (path / "index.html").is_file():
                mlflow.log_artifact(shutil.make_archive(str(Path(tmp) / path.name), "zip", path), artifact_path=folder)
            elif path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=folder)
            elif path.is_file():
                mlflow.log_artifact(str(path), artifact_path=folder)


def _signature(stats: dict, image: str | None = "image", output: str | None = None):
    """Tensor signature: float32 (N, H, W, C) pixels in (Keras: unnamed), (N, K) float32 out (probabilities/logits)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    shape = tuple(stats["image_shape"])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape), image)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(stats["class_names"])), output)]),
    )


def _input_example(prepared: Path, stats: dict) -> np.ndarray:
    """One image (1, H, W, C) float32: the first of the prepared test split (a mid-grey image where there is none)."""
    try:
        x, _ = io.read_split(prepared, "test")
    except FileNotFoundError:
        return np.full((1, *stats["image_shape"]), 128.0, np.float32)
    return x[:1].astype(np.float32)


def _log_models(mlflow, paths: PathsConfig, stats: dict, variant: str):
    """Log the serving pyfunc and the Keras model, each with its signature and input example; the pyfunc's info.

    The pyfunc is MLflow "models from code": pipeline/registry/pyfunc.py (it imports nothing of this project) plus
    the deploy variant's .tflite and labels.json, with requirements PIP_REQUIREMENTS (no TensorFlow). The Keras
    model (logits out) goes in as MLflow's keras flavour.
    """
    import keras

    from pipeline.registry import pyfunc

    example = _input_example(Path(paths.prepared), stats)
    with tempfile.TemporaryDirectory() as tmp:
        labels = Path(tmp) / "labels.json"
        labels.write_text(json.dumps(stats["class_names"]))
        info = mlflow.pyfunc.log_model(
            name="classifier",
            python_model=pyfunc.__file__,
            artifacts={"tflite": str(Path(paths.compressed) / f"{variant}.tflite"), "labels": str(labels)},
            signature=_signature(stats),
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
        )
    mlflow.models.Model.log(
        artifact_path=None,
        name="keras",
        flavor=SimpleNamespace(save_model=_save_keras),
        flavor_name="mlflow.keras",
        model=keras.models.load_model(paths.model),
        signature=_signature(stats, image=None, output="logits"),
        input_example=example,
        pip_requirements=["keras==3.15.1"],
    )
    return info


def _save_keras(path: str, **kwargs) -> None:
    """mlflow.keras.save_model (what mlflow.keras.log_model runs), creating `path` first.

    MLflow 3.17.2 writes the input example before it makes the folder (mlflow/mlflow issue 16183), so
    mlflow.keras.log_model(..., input_example=...) fails with FileNotFoundError.
    """
    import mlflow.keras

    os.makedirs(path, exist_ok=True)
    mlflow.keras.save_model(path=path, **kwargs)


def _log_run(mlflow, params: Params, params_path: Path, inputs: dict) -> None:
    """Params, metrics, per-epoch curves, stage outputs and lineage files of the active run."""
    paths = params.paths
    evaluation = inputs["evaluation"]
    mlflow.log_params(flatten("", params.model_dump(by_alias=True, mode="json")))
    mlflow.log_metrics(
        {
            **numeric_metrics("train", inputs["train"]),
            **numeric_metrics("compress", inputs["compress"]),
            **numeric_metrics(
                "eval", {k: v for k, v in evaluation.items() if k in ("accuracy", "variants", "per_class", "champion")}
            ),
        }
    )
    mlflow.set_tags(text_tags("train", inputs["train"], ("backend", "device", "device_name", "precision", "strategy")))
    _log_history(mlflow, Path(paths.train_plots) / "history.csv")
    _log_outputs(mlflow, _stage_outputs(paths))
    for file in (Path(params_path), Path("dvc.lock"), Path(paths.prepared) / "manifest.json"):
        if file.is_file():
            mlflow.log_artifact(str(file), artifact_path="lineage")


def _read_inputs(paths: PathsConfig) -> dict:
    """The stage outputs registration reads (all written by earlier stages)."""
    prepared = Path(paths.prepared)
    return {
        "stats": io.read_json(prepared / "stats.json"),
        "manifest": io.read_json(prepared / "manifest.json"),
        "validation": io.read_json(paths.validation_report),
        "evaluation": io.read_json(paths.evaluation_report),
        "train": io.read_json(paths.train_metrics),
        "compress": io.read_json(paths.compress_metrics),
    }


def _register(params: Params, params_path: Path, inputs: dict, key: str | None, experiment_id: str) -> dict:
    """One MLflow run (owned by this process: pipeline.registry.runs) and one new version, created with every tag."""
    import mlflow

    from pipeline.registry import lineage, registration, runs

    reg, decision = params.register_, inputs["evaluation"]["decision"]
    variant, blessed = decision["deploy_variant"], bool(decision["blessed"])
    digest = io.sha256_file(Path(params.paths.compressed) / f"{variant}.tflite")
    tags = {
        **lineage_tags(params, inputs["manifest"], inputs["validation"], inputs["evaluation"]),
        lineage.SHA_TAG: digest,
        **({lineage.KEY_TAG: key} if key else {}),
    }
    started = time.perf_counter()
    run_name = f"{params.train.model}-{tags['git.base_commit'][:8]}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags={**tags, **runs.owner_tags()}) as run:
        _log_run(mlflow, params, params_path, inputs)
        info = _log_models(mlflow, params.paths, inputs["stats"], variant)
        # one call creates the version with all of its tags: no window in which it lacks its key or its run
        version_tags = {**tags, registration.SOURCE_RUN_TAG: run.info.run_id}
        created = mlflow.register_model(info.model_uri, reg.model_name, tags=version_tags).version
        version = registration.drop_retried_copies(reg.model_name, key, run.info.run_id, str(created))
        mlflow.set_tag(registration.REGISTERED_TAG, version)
    return {
        "model_name": reg.model_name,
        "version": int(version),
        "alias": None,
        "blessed": blessed,
        "run_id": run.info.run_id,
        "model_uri": f"models:/{reg.model_name}/{version}",
        "experiment_id": experiment_id,
        "deploy_variant": variant,
        "lineage_key": key,
        "sha256": digest,
        "logging_seconds": round(time.perf_counter() - started, 2),
    }


def run(params: Params, params_path: Path, out_path: Path) -> dict:
    """Log one MLflow run with everything and register a model version, without an alias.

    The version gets its lineage key (dvc.lock up to evaluation) and the deploy variant's sha256; `challenger`
    comes later, from `pipeline.versioning.commit` once the run is a pushed commit. A complete version with the same
    lineage key is reused (and completed, after a crash), never registered twice; runs left RUNNING by dead processes
    of this host are marked FAILED. Reads (from `params.paths`): prepared stats.json + manifest.json + the first test
    image (input example), the validation and evaluation reports, train/compress/evaluate metrics, plots, data docs,
    the model and the deploy variant's .tflite; `params_path` and dvc.lock.
    Writes: the MLflow run and model version, and `out_path` (the registration record).
    """
    from pipeline.registry import audit, lineage, registration, runs, store

    reg, inputs = params.register_, _read_inputs(params.paths)
    key = lineage.lineage_key()
    with store.reachable(f"register {reg.model_name}"):
        client = store.client()
        experiment_id = store.ensure_experiment(reg.experiment)
        record = registration.reuse(reg.model_name, key)
        runs.fail_dangling(client, [experiment_id, *runs.experiment_ids(client, [audit.experiment(reg.model_name)])])
        if record is None:
            record = _register(params, params_path, inputs, key, experiment_id)
    io.write_json(out_path, record)
    return record


def command(
    params: ParamsOpt = DEFAULT_PARAMS,
    out: Annotated[
        Path | None, typer.Option(help="Registration record JSON to write (default: paths.registration).")
    ] = None,
) -> None:
    """Log one MLflow run with everything and register a model version (no alias: see `mlops commit-run`)."""
    cfg = load(params)
    record = call(run, cfg, params_path=params, out_path=path_or(out, cfg.paths.registration))
    typer.echo(
        f"registered {record['model_name']} v{record['version']} blessed={record['blessed']} run={record['run_id']}"
        + (" (already registered with this lineage key)" if record.get("reused") else "")
    )


if __name__ == "__main__":
    typer.run(command)
