"""Typed, validated view of params.yaml (the single source of parameters)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core.params_file import ConfigError, describe, read_mapping
from pipeline.core.sections import Section


class PathsConfig(Section):
    """Where every stage reads and writes, relative to the project root (dvc.yaml interpolates these)."""

    raw_cache: str = "data/cache"  # downloads of ingest.url
    ingested: str = "data/ingested"
    accepted: str = "data/accepted"  # monitored batches accepted for retraining (an ingest dependency)
    incoming: str = "data/incoming"  # where new batches arrive for the monitor
    monitor_state: str = "data/monitor/state.json"
    validation_report: str = "reports/validation.json"
    data_docs: str = "reports/data_docs"
    prepared: str = "data/prepared"
    model: str = "models/model.keras"
    train_metrics: str = "metrics/train.json"
    train_plots: str = "plots/train"
    train_backup: str = ".cache/train_backup"
    compressed: str = "models/compressed"
    compress_metrics: str = "metrics/compress.json"
    evaluate_metrics: str = "metrics/evaluate.json"
    evaluation_report: str = "reports/evaluation.json"
    evaluate_plots: str = "plots/evaluate"
    registration: str = "reports/registration.json"


class IngestConfig(Section):
    """`ingest:` which dataset to read and how to split it."""

    dataset: Literal["fashion-mnist", "cifar10", "image-folder"] = "fashion-mnist"
    source: str = "data/raw/fashion-mnist"  # DVC-tracked: data/raw/fashion-mnist.dvc pins its bytes
    url: str | None = None
    image_size: tuple[int, int] = (28, 28)
    channels: Literal[1, 3] = 1
    val_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    stream_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    max_per_class: int | None = Field(None, ge=4)
    shard_size: int = Field(20000, ge=100)
    drop_cross_split_duplicates: bool = True
    # image-folder only: a file that cannot be read as an image (corrupt, truncated, empty, unsupported type).
    # fail: one error lists every bad file; skip: ingest without them (manifest.json lists each with its reason).
    on_bad_file: Literal["fail", "skip"] = "fail"

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://", "file://")):
            raise ValueError(f"must start with http://, https:// or file://, got {v!r}")
        return v


class ValidateConfig(Section):
    """`validate:` bounds of the Great Expectations suite."""

    pixel_mean_range: tuple[float, float] = (1.0, 254.0)
    min_pixel_std: float = Field(1.0, ge=0.0)
    mostly: float = Field(0.999, gt=0.0, le=1.0)
    max_class_imbalance: float = Field(1.5, ge=1.0)
    example_rows: int = Field(5, ge=1)


class PreprocessConfig(Section):
    """`preprocess:` the channel layout the model sees."""

    channels: Literal[1, 3] = 1


class AugmentConfig(Section):
    """`train.augment:` augmentation layers inside the model."""

    flip: bool = True
    translate: float = Field(0.1, ge=0.0, lt=0.5)


class TrainConfig(Section):
    """`train:` architecture, optimiser and schedule."""

    model: Literal["seed_cnn", "fast_net"] = "fast_net"
    width: int = Field(32, ge=4)
    epochs: int = Field(12, ge=1)
    budget_minutes: float | None = Field(None, gt=0)  # set: epochs sized to this wall time (replaces `epochs`)
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: AugmentConfig = AugmentConfig()
    backend: Literal["auto", "tensorflow", "jax"] = "auto"
    device: Literal["auto", "gpu", "cpu"] = "auto"
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "auto"
    max_train_samples: int | None = Field(None, ge=1)


class CompressConfig(Section):
    """`compress:` pruning, fine-tuning and int8 calibration."""

    target_sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    fine_tune_epochs: int = Field(2, ge=0)
    learning_rate: float = Field(3e-4, gt=0)
    pruning_frequency: int = Field(50, ge=1)
    representative_samples: int = Field(500, ge=10)
    int8_per_channel: bool = False


class EvaluateConfig(Section):
    """`evaluate:` the deploy variant and the checks a challenger must pass to be blessed."""

    deploy_variant: Literal["fp32", "fp16", "dynamic", "int8"] = "int8"
    min_accuracy: float = Field(0.9, ge=0, le=1)
    max_drop_vs_fp32: float = Field(0.005, ge=0, le=1)
    per_class_floor: float = Field(0.6, ge=0, le=1)
    mcnemar_alpha: float = Field(0.05, gt=0, lt=1)
    latency_runs: int = Field(200, ge=1)
    batch_size: int = Field(256, ge=1)


class RegisterConfig(Section):
    """`register:` the MLflow registered model and experiment."""

    model_name: str = Field("image-classifier", min_length=1)
    experiment: str = Field("image-classifier", min_length=1)


class MonitorConfig(Section):
    """`monitor:` drift thresholds and the retraining trigger of the feedback loop."""

    batch_size: int = Field(500, ge=1)
    drift_p_value: float = Field(0.01, gt=0, lt=1)
    psi_threshold: float = Field(0.2, gt=0)
    max_accuracy_drop: float = Field(0.03, ge=0, le=1)
    consecutive_batches: int = Field(2, ge=1)
    cooldown_minutes: float = Field(60.0, ge=0)
    experiment: str = Field("monitoring", min_length=1)
    inbox: str | None = None  # s3://bucket/prefix where incoming batches arrive; None: the paths.incoming folder
    captured: str = "data/captured"  # unlabelled captured images waiting for labels (DVC-tracked, never trained on)
    low_confidence: float = Field(0.6, gt=0, lt=1)  # an answer whose max probability is below this is unsure
    max_low_confidence_increase: float = Field(0.1, gt=0, le=1)  # unsure share above the reference's by more: drift
    label_request_size: int = Field(50, ge=1)  # images asked for in one labelling request
    min_new_labels: int = Field(100, ge=1)  # labelled captured images needed before unlabelled drift retrains

    @field_validator("inbox")
    @classmethod
    def _inbox_url(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("s3://") and len(v) > len("s3://")):
            raise ValueError(f"must be an s3://bucket[/prefix] URL (or null for the paths.incoming folder), got {v!r}")
        return v


class DeployConfig(Section):
    """`deploy:` where releases go in S3 and how the model server runs."""

    bucket: str = Field("models", min_length=3)
    prefix: str = "models"
    endpoint_url: str | None = None
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    reload_seconds: float = Field(5.0, gt=0)
    serve_workers: int = Field(1, ge=1, le=64)  # uvicorn worker processes (each loads + hot-reloads on its own)
    serve_threads: int = Field(2, ge=1, le=64)  # inference threads per worker, one TFLite interpreter each
    batch_max_images: int = Field(64, ge=1, le=4096)  # micro-batch: at most this many images per interpreter call
    batch_max_wait_ms: float = Field(1.0, ge=0, le=1000)  # ... gathered for at most this long after the first
    serve_access_log: bool = False  # uvicorn's per-request access log (costs throughput)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_scheme(cls, v: str | None) -> str | None:
        if v is not None and not valid_endpoint(v):
            raise ValueError("must be an http(s)://<host>[:<port>] URL of the S3 endpoint (e.g. http://127.0.0.1:9000)")
        return v


class CaptureConfig(Section):
    """`capture:` the sample of answered /predict requests the server records for the monitor (`delivery.capture`)."""

    enabled: bool = False  # params.yaml turns it on; `mlops serve --no-capture` turns it off
    sample_rate: float = Field(0.05, ge=0, le=1)  # fraction of requests recorded (all images of a sampled request)
    batch_images: int = Field(256, ge=1)  # one .npz when this many images are buffered ...
    flush_seconds: float = Field(30.0, gt=0)  # ... or when the oldest buffered one is this old
    max_bytes_per_hour: int = Field(64 * 1024 * 1024, ge=0)  # raw pixel+probability bytes; beyond: dropped
    max_buffer_images: int = Field(4096, ge=1)  # in-memory bound; when full: dropped (never blocks a request)


def valid_endpoint(url: str) -> bool:
    """True for an http(s)://host[:port][/path] URL (what boto3 accepts as endpoint_url)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a non-numeric / out-of-range port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in url)


class Params(Section):
    """The whole of params.yaml, validated before any stage starts."""

    seed: int = 42
    paths: PathsConfig = PathsConfig()
    ingest: IngestConfig = IngestConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    preprocess: PreprocessConfig = PreprocessConfig()
    train: TrainConfig = TrainConfig()
    compress: CompressConfig = CompressConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    monitor: MonitorConfig = MonitorConfig()
    deploy: DeployConfig = DeployConfig()
    capture: CaptureConfig = CaptureConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> Params:
        if self.ingest.val_fraction + self.ingest.stream_fraction >= 0.8:
            raise ValueError("ingest.val_fraction + ingest.stream_fraction must leave at least 20% for training")
        return self


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ConfigError naming every bad field (`pipeline.core.params_file`)."""
    path = Path(path)
    raw = read_mapping(path)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe(path, exc, Params)) from exc


def update_params(path: str | Path, overrides: dict[str, object]) -> Params:
    """Set dotted keys (e.g. {"train.epochs": 3}) in params.yaml, keeping its comments and layout.

    The result is validated before anything is written: a bad override leaves params.yaml untouched.
    """
    from ruamel.yaml import YAML

    path = Path(path)
    rt = YAML()
    doc = rt.load(path.read_text())
    for dotted, value in overrides.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for key in parents:
            if key not in node:
                raise ConfigError(f"{path}: no section {key!r} for override {dotted!r}")
            node = node[key]
        if leaf not in node:
            raise ConfigError(f"{path}: unknown parameter {dotted!r}")
        node[leaf] = value
    import io as _io

    buffer = _io.StringIO()
    rt.dump(doc, buffer)
    text = buffer.getvalue()
    try:
        params = Params.model_validate(yaml.safe_load(text))
    except ValidationError as exc:
        raise ConfigError(f"override {overrides} is invalid; {describe(path, exc, Params)}") from exc
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return params
