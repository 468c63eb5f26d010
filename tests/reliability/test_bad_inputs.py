"""Bad input, one table: each case builds a bad input in tmp_path and runs the real entry point (the `mlops` CLI
in-process, or the stage function where there is no command), then checks that

* it fails with exit code 2 (CLI) or the specific exception (function) — or, for valid-but-unusual input, succeeds;
* the message names the file / field at fault AND says what was expected or how to fix it;
* nothing is half-written: the stage's output is absent or still the previous valid one, with no temp leftovers.

`len(CASES)` bad inputs are tried; each passing case is one "caught with a clear error" (see the terminal summary).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.delivery import releases as deploy, s3 as s3io

from pipeline.core import io

from pipeline.monitoring import intake as monitor
from pipeline.monitoring.state import MonitorState
from pipeline.core.config import DeployConfig, Params
from pipeline.data.idx import FASHION_MNIST_FILES
from pipeline.core.errors import DatasetError, StageError
from tests.data.test_cifar_reader import batch as cifar_batch
from tests.data.test_cifar_reader import blobs as cifar_blobs
from tests.data.test_cifar_reader import make_dir as cifar_dir
from tests.data.test_cifar_reader import make_tarball as cifar_tarball
from tests.data.test_idx_reader import idx_bytes
from tests.helpers import good_splits, write_ingested
from tests.reliability.common import CLASSES, bump, cli, snapshot, temp_leftovers, write_yaml

NO_CHAMPION_MODEL = "no-champion-yet"


@dataclass
class Ctx:
    tmp: Path
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)


@dataclass
class Case:
    run: Callable[[], tuple[object, str]]  # (exit code or exception class, message)
    expect: int | type[BaseException]      # 2 / 0 for the CLI, an exception class for a function
    names: tuple[str, ...]                 # the file / field the message must name
    fix: str                               # regex: what was expected / how to fix it
    outputs: tuple[Path, ...] = ()         # must stay as they were (absent, or the previous valid output)
    check: Callable[[], None] | None = None


def call(fn, *args, **kwargs) -> tuple[object, str]:
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the case says which exception it expects
        return type(exc), str(exc)
    return 0, repr(result)


def previous_ingested(out: Path) -> Path:
    """A valid ingest output already in place: a failed run must leave exactly this."""
    return write_ingested(out, good_splits(), CLASSES)


def ingest_case(ctx: Ctx, ingest: dict, names: tuple[str, ...], fix: str, **kw) -> Case:
    params = write_yaml(ctx.tmp / "params.yaml", {"ingest": ingest})
    out = previous_ingested(ctx.tmp / "ingested")
    return Case(lambda: cli("ingest", "--params", params, "--out", out), 2, names, fix, outputs=(out,), **kw)


# --------------------------------------------------------------------------------------------- IDX (Fashion-MNIST)


def _fashion_files(directory: Path) -> Path:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
              "train_labels": (np.arange(30) % 10).astype(np.uint8),
              "test_images": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
              "test_labels": np.arange(10, dtype=np.uint8)}
    for role, name in FASHION_MNIST_FILES.items():
        (directory / name).write_bytes(gzip.compress(idx_bytes(arrays[role]), mtime=0))
    return directory


def idx_truncated_gzip(ctx: Ctx) -> Case:
    src = _fashion_files(ctx.tmp / "fmnist")
    path = src / FASHION_MNIST_FILES["train_images"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ingest_case(ctx, {"dataset": "fashion-mnist", "source": str(src)}, (str(path),),
                       r"truncated.*re-download")


def idx_wrong_magic_cli(ctx: Ctx) -> Case:
    """Through `mlops ingest` the sha256 of the official release is checked first: any corruption is named."""
    src = _fashion_files(ctx.tmp / "fmnist")
    path = src / FASHION_MNIST_FILES["train_images"]
    path.write_bytes(gzip.compress(b"\x08\x03\x00\x00" + idx_bytes(np.zeros((2, 28, 28), np.uint8))[4:]))
    return ingest_case(ctx, {"dataset": "fashion-mnist", "source": str(src)}, (str(path), "checksum mismatch"),
                       r"expected sha256 .*(corrupt|official release)")


def idx_wrong_magic_reader(ctx: Ctx) -> Case:
    """The generic IDX reader (no official checksums) parses the header: a wrong magic is named as such."""
    from pipeline.data.idx import load_idx_dataset

    src = _fashion_files(ctx.tmp / "idx")
    path = src / FASHION_MNIST_FILES["train_labels"]
    path.write_bytes(b"\x01\x02" + idx_bytes((np.arange(30) % 10).astype(np.uint8))[2:])
    return Case(lambda: call(load_idx_dataset, src, FASHION_MNIST_FILES), DatasetError,
                (str(path), "bad magic"), r"expected 000008nn")


# --------------------------------------------------------------------------------------------- CIFAR-10


def cifar_truncated_tarball(ctx: Ctx) -> Case:
    path = cifar_tarball(ctx.tmp / "cifar-10-python.tar.gz", cifar_blobs())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ingest_case(ctx, {"dataset": "cifar10", "source": str(path)}, (str(path),),
                       r"corrupt or truncated tarball.*re-download")


def cifar_missing_keys(ctx: Ctx) -> Case:
    bad = cifar_batch(2)
    del bad[b"labels"]
    root = cifar_dir(ctx.tmp / "cifar", cifar_blobs(data_batch_3=bad))
    return ingest_case(ctx, {"dataset": "cifar10", "source": str(root)}, ("data_batch_3", "labels"),
                       r"missing key.*(expected|re-download)")


def cifar_label_out_of_range(ctx: Ctx) -> Case:
    bad = cifar_batch(1)
    bad[b"labels"][4] = 12
    root = cifar_dir(ctx.tmp / "cifar", cifar_blobs(data_batch_2=bad))
    return ingest_case(ctx, {"dataset": "cifar10", "source": str(root)}, (str(root), "label 12"),
                       r"out of range.*10")


# --------------------------------------------------------------------------------------------- image folder


def _png(path: Path, mode: str, seed: int, size=(8, 8)) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == "P":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P")
        im.info["transparency"] = 0
    else:
        bands = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
        arr = rng.integers(30, 226, (h, w, bands), dtype=np.uint8)
        im = Image.fromarray(arr[..., 0] if bands == 1 else arr, mode=mode)
    im.save(path)
    return path


def _folder(root: Path, per_class: int = 6) -> Path:
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            _png(root / "train" / name / f"{i}.png", "RGB", seed=100 * c + i)
    return root


def folder_ingest(ctx: Ctx, root: Path, names, fix, **kw) -> Case:
    return ingest_case(ctx, {"dataset": "image-folder", "source": str(root), "image_size": [8, 8], "channels": 3},
                       names, fix, **kw)


def folder_non_image_file(ctx: Ctx) -> Case:
    root = _folder(ctx.tmp / "images")
    (root / "train" / "dog" / "notes.txt").write_text("not a picture")
    return folder_ingest(ctx, root, (str(root / "train" / "dog" / "notes.txt"),), r"expected \.png.*remove it")


def folder_corrupt_png(ctx: Ctx) -> Case:
    root = _folder(ctx.tmp / "images")
    broken = root / "train" / "cat" / "broken.png"
    broken.write_bytes(_png(ctx.tmp / "ok.png", "RGB", 1).read_bytes()[:40])  # a PNG cut short
    return folder_ingest(ctx, root, (str(broken), "cannot read image"), r"replace or remove")


def folder_empty_class(ctx: Ctx) -> Case:
    root = _folder(ctx.tmp / "images")
    (root / "train" / "emu").mkdir()
    return folder_ingest(ctx, root, (str(root / "train" / "emu"), "no images"), r"add .*images.* or remove")


def folder_mixed_modes_accepted(ctx: Ctx) -> Case:
    """Grayscale, grayscale+alpha, RGBA, palette with transparency and 16-bit images mixed with RGB: all converted."""
    root = ctx.tmp / "images"
    modes = ["L", "LA", "RGBA", "P", "I;16", "RGB"]
    for c, name in enumerate(CLASSES):
        for i, mode in enumerate(modes):
            _png(root / "train" / name / f"{i}-{mode.replace(';', '')}.png", mode, seed=10 * c + i)
    params = write_yaml(ctx.tmp / "params.yaml", {"ingest": {"dataset": "image-folder", "source": str(root),
                                                              "image_size": [8, 8], "channels": 3}})
    out = ctx.tmp / "ingested"

    def check() -> None:
        manifest = io.read_json(out / "manifest.json")
        assert manifest["image_shape"] == [8, 8, 3]
        total = sum(s["count"] for s in manifest["splits"].values()) + sum(manifest["duplicates_dropped"].values())
        assert total == len(CLASSES) * len(modes)
        x, _ = io.read_split(out, "train")
        assert x.dtype == np.uint8 and x.shape[1:] == (8, 8, 3)

    return Case(lambda: cli("ingest", "--params", params, "--out", out), 0, ("ingested image-folder",), r"-> ",
                check=check)


# --------------------------------------------------------------------------------------------- ingested shards (validate)


def validate_case(ctx: Ctx, mutate, names: tuple[str, ...], fix: str) -> Case:
    splits = good_splits()
    mutate(splits)
    data = write_ingested(ctx.tmp / "ingested", splits, CLASSES)
    params = write_yaml(ctx.tmp / "params.yaml", {})
    report, docs = ctx.tmp / "reports" / "validation.json", ctx.tmp / "reports" / "data_docs"

    def check() -> None:  # the failure report is complete (written atomically) and says why
        on_disk = json.loads(report.read_text())
        assert on_disk["success"] is False and on_disk["failures"]
        assert not temp_leftovers(report) and not temp_leftovers(docs)

    return Case(lambda: cli("validate", "--params", params, "--data", data, "--report", report, "--docs", docs),
                2, (*names, str(report)), fix, outputs=(ctx.tmp / "prepared",), check=check)


def _nan_inf(s):
    x, y = s["train"]
    x = x.astype(np.float32)
    x[2, 1, 1, 0] = np.nan
    x[4, 0, 0, 0] = np.inf
    s["train"] = (x, y)


def _wrong_shape_val(s):
    from tests.helpers import make_images

    s["val"] = make_images(6, 3, (9, 8, 1), seed=22)


def _leak(s):
    xt, yt = s["test"]
    xt = xt.copy()
    xt[0] = s["train"][0][5]
    s["test"] = (xt, yt)


def _label_out_of_range(s):
    x, y = s["train"]
    y = y.copy()
    y[3] = 7
    s["train"] = (x, y)


def shards_nan_inf(ctx: Ctx) -> Case:
    return validate_case(ctx, _nan_inf, ("images.non_finite", "split=train index=2", "split=train index=4"),
                         r"no NaN/inf pixels.*pixels are uint8|pixels are uint8.*no NaN/inf pixels")


def shards_wrong_shape_one_split(ctx: Ctx) -> Case:
    return validate_case(ctx, _wrong_shape_val, ("images.height", "split=val index=0"), r"image height is 8")


def shards_cross_split_duplicates(ctx: Ctx) -> Case:
    return validate_case(ctx, _leak, ("images.cross_split_duplicate", "split=test index=0", "also_in=['train:5']"),
                         r"no image appears in two splits")


def shards_label_out_of_range(ctx: Ctx) -> Case:
    return validate_case(ctx, _label_out_of_range, ("images.label", "split=train index=3 label=7"),
                         r"labels are class ids 0\.\.2")


# --------------------------------------------------------------------------------------------- monitoring


def monitor_empty_batch(ctx: Ctx) -> Case:
    params = Params.model_validate({"paths": {
        "incoming": str(ctx.tmp / "incoming"), "accepted": str(ctx.tmp / "accepted"),
        "monitor_state": str(ctx.tmp / "monitor" / "state.json")}})
    path = ctx.tmp / "incoming" / "empty.npz"
    path.parent.mkdir()
    np.savez(path, x=np.zeros((0, 8, 8, 1), np.uint8), y=np.zeros(0, np.uint8))
    state = MonitorState.load(params.paths.monitor_state)
    profile = {"class_names": CLASSES, "image_shape": [8, 8, 1]}

    def check() -> None:  # quarantined and recorded (so the loop moves on), nothing accepted for retraining
        saved = io.read_json(params.paths.monitor_state)
        (record,) = saved["processed"].values()
        assert record["status"] == "rejected" and record["file"] == "empty.npz"
        assert (ctx.tmp / "incoming" / "rejected" / "empty.npz").is_file() and not path.exists()

    return Case(lambda: call(monitor.check_batch, params, path, None, None, profile, state), StageError,
                (str(path),), r"no images.*at least one", outputs=(ctx.tmp / "accepted",), check=check)


# --------------------------------------------------------------------------------------------- params.yaml


def params_unknown_key(ctx: Ctx) -> Case:
    (ctx.tmp / "params.yaml").write_text("train:\n  epochz: 3\n")
    out = previous_ingested(ctx.tmp / "ingested")
    return Case(lambda: cli("ingest", "--params", ctx.tmp / "params.yaml", "--out", out), 2,
                (str(ctx.tmp / "params.yaml"), "train.epochz"), r"unknown .*valid keys.*epochs", outputs=(out,))


def params_wrong_type(ctx: Ctx) -> Case:
    (ctx.tmp / "params.yaml").write_text("train:\n  epochs: many\n")
    out = previous_ingested(ctx.tmp / "ingested")
    return Case(lambda: cli("ingest", "--params", ctx.tmp / "params.yaml", "--out", out), 2,
                (str(ctx.tmp / "params.yaml"), "train.epochs", "'many'"), r"valid integer", outputs=(out,))


# --------------------------------------------------------------------------------------------- S3 locations


def s3_url_missing(ctx: Ctx) -> Case:
    return Case(lambda: call(s3io.parse_s3_url, ""), StageError, ("not an S3 URL", "''"),
                r"expected s3://<bucket>/<key>")


def s3_url_malformed(ctx: Ctx) -> Case:
    return Case(lambda: call(s3io.parse_s3_url, "s3://Bad_Bucket/models"), StageError, ("'Bad_Bucket'",),
                r"not a valid bucket name \(3–63 characters")


def endpoint_url_without_scheme(ctx: Ctx) -> Case:
    params = write_yaml(ctx.tmp / "params.yaml", {"deploy": {"endpoint_url": "localhost:9000"}})
    return Case(lambda: cli("deploy", "--params", params), 2, ("deploy.endpoint_url", "localhost:9000"),
                r"http\(s\)://")


def endpoint_url_without_host(ctx: Ctx) -> Case:
    params = write_yaml(ctx.tmp / "params.yaml", {"deploy": {"endpoint_url": "http://"}})
    return Case(lambda: cli("deploy", "--params", params), 2, ("deploy.endpoint_url", "'http://'"),
                r"http\(s\)://<host>")


def endpoint_url_env_malformed(ctx: Ctx) -> Case:
    """The endpoint may also come from AWS_ENDPOINT_URL (not validated by params.yaml)."""
    for var, value in (("AWS_ENDPOINT_URL", "http://"), ("AWS_ACCESS_KEY_ID", "AKEY"),
                       ("AWS_SECRET_ACCESS_KEY", "not-a-real-secret"), ("AWS_DEFAULT_REGION", "us-east-1")):
        ctx.monkeypatch.setenv(var, value)
    ctx.monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return Case(lambda: call(deploy.read_pointer, DeployConfig(), "m"), StageError,
                ("'http://'", "AWS_ENDPOINT_URL"), r"http\(s\)://<host>")


# --------------------------------------------------------------------------------------------- a registry with no champion


@pytest.fixture(scope="module")
def empty_registry(tmp_path_factory) -> str:
    """A fresh, empty MLflow store (created once: the schema migration takes seconds)."""
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    return uri


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory, template) -> Path:
    """Prepared data plus a model and every .tflite variant evaluate reads (tiny, untrained)."""
    from pipeline.stages import preprocess
    from pipeline.ml.conversion import VARIANTS
    from pipeline.core.config import PreprocessConfig

    root = tmp_path_factory.mktemp("eval")
    preprocess.run(PreprocessConfig(channels=1), write_ingested(root / "ingested", good_splits(), CLASSES),
                   root / "prepared")
    (root / "compressed").mkdir()
    shutil.copy(template / "model.keras", root / "model.keras")
    shutil.copy(template / "model.keras", root / "compressed" / "pruned.keras")
    for variant in VARIANTS:
        shutil.copy(template / "v1.tflite", root / "compressed" / f"{variant}.tflite")
    return root


def _no_champion(ctx: Ctx) -> Path:
    ctx.monkeypatch.setenv("MLFLOW_TRACKING_URI", ctx.fixture("empty_registry"))
    return write_yaml(ctx.tmp / "params.yaml", {"register": {"model_name": NO_CHAMPION_MODEL}})


def no_champion_deploy(ctx: Ctx) -> Case:
    params = _no_champion(ctx)
    return Case(lambda: cli("deploy", "--params", params), 2, (NO_CHAMPION_MODEL, "no champion yet"),
                r"approve a challenger first")


def no_champion_promote(ctx: Ctx) -> Case:
    params = _no_champion(ctx)
    return Case(lambda: cli("promote", "--approve", "--by", "ops", "--params", params), 2,
                (NO_CHAMPION_MODEL, "'challenger'"), r"run the training pipeline first")


def no_champion_rollback(ctx: Ctx) -> Case:
    params = _no_champion(ctx)
    return Case(lambda: cli("rollback", "--by", "ops", "--params", params), 2, (NO_CHAMPION_MODEL,),
                r"needs both 'champion' and 'previous'")


def no_champion_evaluate_accepted(ctx: Ctx) -> Case:
    """Evaluate must still work without a champion and say so in its decision."""
    params = _no_champion(ctx)
    write_yaml(params, {"register": {"model_name": NO_CHAMPION_MODEL},
                        "evaluate": {"min_accuracy": 0.0, "per_class_floor": 0.0, "max_drop_vs_fp32": 1.0,
                                     "latency_runs": 2}})
    src = ctx.fixture("eval_inputs")
    report = ctx.tmp / "reports" / "evaluation.json"

    def check() -> None:
        decision = io.read_json(report)["decision"]
        (vs,) = [r for r in decision["reasons"] if r["check"] == "vs_champion"]
        assert vs["passed"] and "no champion" in vs["detail"]
        assert io.read_json(report)["champion"] is None

    return Case(lambda: cli("evaluate", "--params", params, "--data", src / "prepared", "--model", src / "model.keras",
                            "--compressed", src / "compressed", "--metrics", ctx.tmp / "metrics" / "evaluate.json",
                            "--report", report, "--plots", ctx.tmp / "plots"),
                0, ("vs_champion",), r"no champion in the registry yet", check=check)


# --------------------------------------------------------------------------------------------- the table


CASES = [
    pytest.param(idx_truncated_gzip, id="idx-truncated-gzip"),
    pytest.param(idx_wrong_magic_cli, id="idx-wrong-magic-official-checksum"),
    pytest.param(idx_wrong_magic_reader, id="idx-wrong-magic-generic-reader"),
    pytest.param(cifar_truncated_tarball, id="cifar-truncated-tarball"),
    pytest.param(cifar_missing_keys, id="cifar-pickle-missing-keys"),
    pytest.param(cifar_label_out_of_range, id="cifar-label-out-of-range"),
    pytest.param(folder_non_image_file, id="folder-non-image-file"),
    pytest.param(folder_corrupt_png, id="folder-corrupt-png"),
    pytest.param(folder_mixed_modes_accepted, id="folder-mixed-grey-rgba-palette-16bit-ACCEPTED"),
    pytest.param(folder_empty_class, id="folder-empty-class"),
    pytest.param(shards_label_out_of_range, id="shards-label-out-of-range"),
    pytest.param(shards_nan_inf, id="shards-nan-inf-floats"),
    pytest.param(shards_wrong_shape_one_split, id="shards-wrong-shape-in-one-split"),
    pytest.param(shards_cross_split_duplicates, id="shards-duplicates-across-splits"),
    pytest.param(monitor_empty_batch, id="monitor-empty-incoming-batch"),
    pytest.param(params_unknown_key, id="params-unknown-key"),
    pytest.param(params_wrong_type, id="params-wrong-type"),
    pytest.param(s3_url_missing, id="s3-url-missing"),
    pytest.param(s3_url_malformed, id="s3-url-malformed-bucket"),
    pytest.param(endpoint_url_without_scheme, id="endpoint-url-no-scheme"),
    pytest.param(endpoint_url_without_host, id="endpoint-url-no-host"),
    pytest.param(endpoint_url_env_malformed, id="endpoint-url-env-malformed"),
    pytest.param(no_champion_deploy, id="no-champion-deploy"),
    pytest.param(no_champion_promote, id="no-champion-promote"),
    pytest.param(no_champion_rollback, id="no-champion-rollback"),
    pytest.param(no_champion_evaluate_accepted, id="no-champion-evaluate-ACCEPTED"),
]


@pytest.mark.parametrize("build", CASES)
def test_bad_input_fails_clearly_and_writes_nothing(build, tmp_path, monkeypatch, request, tally):
    monkeypatch.chdir(tmp_path)  # relative defaults (data/cache, data/accepted, mlflow/) stay in tmp_path
    bump(tally, "bad_inputs_tried")
    case = build(Ctx(tmp_path, request, monkeypatch))
    before = {path: snapshot(path) for path in case.outputs}

    outcome, message = case.run()

    if isinstance(case.expect, int):
        assert outcome == case.expect, f"exit code {outcome}, expected {case.expect}:\n{message}"
    else:
        assert isinstance(outcome, type) and issubclass(outcome, case.expect), \
            f"got {outcome}, expected {case.expect.__name__}:\n{message}"
    for fragment in case.names:
        assert fragment in message, f"the message does not name {fragment!r}:\n{message}"
    assert re.search(case.fix, message, re.S), f"the message does not say what was expected ({case.fix!r}):\n{message}"
    assert "Traceback" not in message, message
    for path, previous in before.items():
        assert snapshot(path) == previous, f"{path} was modified by a failed run"
        assert not temp_leftovers(path), f"temp leftovers beside {path}: {temp_leftovers(path)}"
    if case.check:
        case.check()
    bump(tally, "bad_inputs_caught")


def test_the_table_covers_every_category():
    """The table is the count of bad inputs tried; keep each category of issue 6 represented."""
    ids = [p.id for p in CASES]
    for category in ("idx-truncated", "idx-wrong-magic", "cifar-truncated", "cifar-pickle-missing", "folder-non-image",
                     "folder-corrupt", "folder-mixed", "folder-empty", "label-out-of-range", "nan-inf", "wrong-shape",
                     "duplicates", "monitor-empty", "params-unknown", "params-wrong-type", "s3-url", "endpoint-url",
                     "no-champion-deploy", "no-champion-promote", "no-champion-rollback", "no-champion-evaluate"):
        assert any(category in i for i in ids), category
    assert len(ids) == len(set(ids)) == 26
