"""Data-validation stage: the GX suite passes good data and names the failing expectation + example rows on bad."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

_ROOT = str(Path(__file__).resolve().parents[2])  # so `tests.helpers` imports under plain `pytest` too
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from pipeline.core.config import ValidateConfig  # noqa: E402
from pipeline.core.errors import StageError  # noqa: E402
from pipeline.data import tables  # noqa: E402
from pipeline.stages import validate  # noqa: E402
from tests.helpers import good_splits, make_images, write_ingested  # noqa: E402

CLASSES = ["a", "b", "c"]


def _run(tmp_path: Path, splits: dict, cfg: ValidateConfig | None = None, **manifest_kw):
    data = write_ingested(tmp_path / "ingested", splits, CLASSES, **manifest_kw)
    report, docs = tmp_path / "reports" / "validation.json", tmp_path / "reports" / "docs"
    return data, report, docs, (lambda: validate.run(cfg or ValidateConfig(), data, report, docs))


def test_good_data_passes_and_writes_report_and_docs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything GX writes relative to the cwd would show up here
    _, report, docs, go = _run(tmp_path, good_splits())
    result = go()
    assert result["success"] is True
    assert result["rows"] == 3 * (20 + 6 + 6 + 4)
    stats = result["statistics"]
    assert stats["unsuccessful_expectations"] == 0
    assert stats["successful_expectations"] == stats["evaluated_expectations"] >= 12
    on_disk = json.loads(report.read_text())
    assert on_disk["success"] is True and on_disk["failures"] == []
    assert on_disk["manifest_checksum"] == json.loads((tmp_path / "ingested" / "manifest.json").read_text())["checksum"]
    index = docs / "index.html"
    assert index.is_file() and "<html" in index.read_text().lower()
    assert any((docs / "validations").rglob("*.html"))
    assert not (tmp_path / "gx").exists() and not (tmp_path / "great_expectations").exists()


def test_empty_stream_is_fine(tmp_path):
    splits = good_splits()
    del splits["stream"]  # the fixture writes it empty
    _, _, _, go = _run(tmp_path, splits)
    assert go()["success"] is True


# --- bad data: each case mutates good splits; expect (expectation type, "table.column", example text) ------------

def _label_out_of_range(s):
    x, y = s["train"]
    y = y.copy()
    y[3] = 7
    s["train"] = (x, y)
    return {}


def _nan_in_float(s):
    x, y = s["train"]
    x = x.astype(np.float32)
    x[2, 1, 1, 0] = np.nan
    s["train"] = (x, y)
    return {}


def _wrong_shape_in_val(s):
    s["val"] = make_images(6, 3, (9, 8, 1), seed=22)
    return {}


def _leak_train_into_test(s):
    xt, yt = s["test"]
    xt = xt.copy()
    xt[0] = s["train"][0][5]
    s["test"] = (xt, yt)
    return {}


def _class_missing_in_train(s):
    x, y = s["train"]
    keep = y != 2
    s["train"] = (x[keep], y[keep])
    return {}


def _heavy_imbalance(s):
    x, y = make_images(60, 1, (8, 8, 1), seed=11)
    x2, y2 = make_images(10, 3, (8, 8, 1), seed=12)
    s["train"] = (np.concatenate([x, x2[y2 > 0]]), np.concatenate([y, y2[y2 > 0]]))
    return {}


def _all_black(s):
    x, y = s["train"]
    s["train"] = (np.zeros_like(x), y)
    return {}


def _empty_val(s):
    del s["val"]  # written as an empty split
    return {}


BAD_CASES = [
    pytest.param(_label_out_of_range, "expect_column_values_to_be_between", "images.label",
                 "split=train index=3 label=7", id="label-out-of-range"),
    pytest.param(_nan_in_float, "expect_column_values_to_be_in_set", "images.non_finite",
                 "split=train index=2 label=0 non_finite=True", id="nan-in-float-array"),
    pytest.param(_wrong_shape_in_val, "expect_column_values_to_be_in_set", "images.height",
                 "split=val index=0 label=0 height=9", id="wrong-shape-one-split"),
    pytest.param(_leak_train_into_test, "expect_column_values_to_be_in_set", "images.cross_split_duplicate",
                 "split=test index=0 label=0 cross_split_duplicate=True also_in=['train:5']", id="train-test-leak"),
    pytest.param(_class_missing_in_train, "expect_column_distinct_values_to_contain_set", "images.label",
                 "split=train label=2 class_name=c count=0", id="class-missing"),
    pytest.param(_heavy_imbalance, "expect_column_values_to_be_between", "classes.ratio_to_uniform",
                 "split=train label=0 class_name=a ratio_to_uniform=", id="class-imbalance"),
    pytest.param(_all_black, "expect_column_values_to_be_between", "images.mean",
                 "split=train index=0 label=0 mean=0.0", id="all-black"),
    pytest.param(_empty_val, "expect_column_values_to_be_between", "splits.count",
                 "split=val count=0", id="empty-split"),
]


@pytest.mark.parametrize(("mutate", "expectation", "where", "example"), BAD_CASES)
def test_bad_data_fails_naming_expectation_and_rows(tmp_path, mutate, expectation, where, example):
    splits = good_splits()
    manifest_kw = mutate(splits)
    _, report, docs, go = _run(tmp_path, splits, **manifest_kw)

    with pytest.raises(StageError) as info:
        go()
    message = str(info.value)
    assert f"{expectation} on {where}" in message, message
    assert example in message, message
    assert str(report) in message

    on_disk = json.loads(report.read_text())
    assert on_disk["success"] is False
    assert on_disk["statistics"]["unsuccessful_expectations"] >= 1
    table, column = where.split(".")
    matching = [f for f in on_disk["failures"]
                if f["expectation"] == expectation and f["table"] == table and f["column"] == column]
    assert matching, on_disk["failures"]
    assert matching[0]["examples"], matching[0]
    assert (docs / "index.html").is_file()


def test_examples_are_capped_by_config(tmp_path):
    splits = good_splits()
    _all_black(splits)
    _, report, _, go = _run(tmp_path, splits, cfg=ValidateConfig(example_rows=2))
    with pytest.raises(StageError) as info:
        go()
    failure = next(f for f in json.loads(report.read_text())["failures"] if f["column"] == "mean")
    assert failure["unexpected_count"] == 60
    assert len(failure["examples"]) == 2
    assert "split=train index=1 " in str(info.value) and "split=train index=2 " not in str(info.value)


def test_mostly_tolerates_a_few_blank_images(tmp_path):
    splits = good_splits()
    x, y = splits["train"]
    x = x.copy()
    x[0] = 0
    splits["train"] = (x, y)
    _, _, _, go = _run(tmp_path, splits, cfg=ValidateConfig(mostly=0.9))
    assert go()["success"] is True
    _, _, _, go_strict = _run(tmp_path / "strict", splits, cfg=ValidateConfig(mostly=1.0))
    with pytest.raises(StageError, match="images.mean"):
        go_strict()


def test_image_table_values(tmp_path):
    splits = good_splits()
    xt, yt = splits["test"]
    xt = xt.copy()
    xt[1] = splits["train"][0][0]
    splits["test"] = (xt, yt)
    write_ingested(tmp_path, splits, CLASSES)
    images, classes = tables.build_image_table(tmp_path)

    assert len(images) == sum(len(x) for x, _ in splits.values())
    assert list(images["row_id"]) == list(range(len(images)))
    train = images[images["split"] == "train"].reset_index(drop=True)
    x0 = splits["train"][0][0].astype(np.float64)
    assert train.loc[0, "mean"] == pytest.approx(x0.mean())
    assert train.loc[0, "std"] == pytest.approx(x0.std())
    assert train.loc[0, ["min", "max"]].tolist() == [x0.min(), x0.max()]
    assert (train.loc[0, "height"], train.loc[0, "width"], train.loc[0, "channels"]) == (8, 8, 1)
    assert set(images["dtype"]) == {"uint8"} and not images["non_finite"].any()
    dup = images[images["cross_split_duplicate"]]
    assert sorted(zip(dup["split"], dup["index"])) == [("test", 1), ("train", 0)]

    assert set(classes["split"]) == {"train", "val", "test", "stream"}
    row = classes[(classes["split"] == "train") & (classes["label"] == 1)].iloc[0]
    assert (row["count"], row["fraction"], row["ratio_to_uniform"]) == (20, pytest.approx(1 / 3), pytest.approx(1.0))


def test_image_table_flags_non_finite_floats(tmp_path):
    x, y = make_images(4, 3, (4, 4, 1), seed=5)
    x = x.astype(np.float64)
    x[1, 0, 0, 0] = np.inf
    x[2, :] = np.nan
    write_ingested(tmp_path, {"train": (x, y)}, CLASSES)
    images, _ = tables.build_image_table(tmp_path)
    assert images["non_finite"].tolist()[:4] == [False, True, True, False]
    assert images["dtype"].iloc[0] == "float64"
    assert np.isfinite(images.loc[1, "mean"])  # stats over the finite pixels


def test_cli_validate_exit_code_and_message(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    good = write_ingested(tmp_path / "good", good_splits(), CLASSES)
    bad_splits = good_splits()
    _leak_train_into_test(bad_splits)
    bad = write_ingested(tmp_path / "bad", bad_splits, CLASSES)
    runner = CliRunner()

    def invoke(data):
        return runner.invoke(app, ["validate", "--params", str(params), "--data", str(data),
                                   "--report", str(tmp_path / "r.json"), "--docs", str(tmp_path / "docs")])

    ok = invoke(good)
    assert ok.exit_code == 0, ok.output
    assert "validation passed" in ok.output and "108 images" in ok.output

    res = invoke(bad)
    assert res.exit_code == 2, res.output
    text = res.output + (res.stderr or "")
    assert "expect_column_values_to_be_in_set on images.cross_split_duplicate" in text
    assert "split=test index=0" in text
    assert json.loads((tmp_path / "r.json").read_text())["success"] is False


def test_manifest_count_mismatch_fails(tmp_path):
    data, report, _, go = _run(tmp_path, good_splits())
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["val"]["count"] = 999
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StageError) as info:
        go()
    assert "expect_column_pair_values_to_be_equal on splits.count,manifest_count" in str(info.value)
    assert "split=val count=18 manifest_count=999" in str(info.value)
