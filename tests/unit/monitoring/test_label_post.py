"""`mlops label --post`: labels go to the monitor's inbox as one JSON file instead of being applied here."""

from __future__ import annotations

import json

import pytest

from pipeline.core.config import Params
from pipeline.core.errors import StageError
from pipeline.monitoring import labels

NAMES = ["shirt", "shoe", "bag"]


def _params(tmp_path, inbox: str | None = None) -> Params:
    return Params.model_validate({"paths": {"incoming": str(tmp_path / "incoming")}, "monitor": {"inbox": inbox}})


def test_a_local_inbox_gets_one_file_of_class_indices(tmp_path):
    where = labels.post_labels(_params(tmp_path), [("r1", "shoe"), ("r2", "2")], NAMES, upload=None)
    assert where.startswith(str(tmp_path / "incoming" / "labels" / "labels-")) and where.endswith(".json")
    assert json.loads(open(where).read()) == {"r1": 1, "r2": 2}


def test_an_s3_inbox_goes_through_the_injected_uploader(tmp_path):
    sent = []

    def upload(params, uri, path):
        sent.append((uri, path.name, json.loads(path.read_text())))
        return f"{uri}{path.name}"

    where = labels.post_labels(_params(tmp_path, "s3://incoming/batches"), [("r1", "0")], None, upload)
    assert sent and sent[0][0] == "s3://incoming/batches/labels/" and sent[0][2] == {"r1": 0}
    assert where == f"s3://incoming/batches/labels/{sent[0][1]}"
    assert not (tmp_path / "incoming").exists(), "nothing applied or left locally"


@pytest.mark.parametrize(("pairs", "names", "match"), [
    ([("r1", "hat")], NAMES, "hat"),
    ([("r1", "shoe")], None, "class indices"),
    ([], NAMES, "no labels"),
])
def test_bad_labels_are_refused_and_nothing_is_posted(tmp_path, pairs, names, match):
    with pytest.raises(StageError, match=match):
        labels.post_labels(_params(tmp_path), pairs, names, upload=None)
    assert not (tmp_path / "incoming").exists()


def test_an_s3_inbox_without_an_uploader_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="no S3 uploader"):
        labels.post_labels(_params(tmp_path, "s3://incoming/batches"), [("r1", "0")], None, upload=None)
