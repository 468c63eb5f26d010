"""The lineage key: one hash over dvc.lock up to evaluation — what produced a model, not what registered it."""

from __future__ import annotations

import yaml

from pipeline.registry.lineage import lineage_key


def _lock(tmp_path, **stages):
    path = tmp_path / "dvc.lock"
    path.write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    return path


def test_the_key_follows_every_input_stage_and_ignores_the_registration(tmp_path):
    train = {"deps": [{"path": "pipeline/ml/models.py", "md5": "a"}], "outs": [{"path": "m.keras", "md5": "b"}]}
    key = lineage_key(_lock(tmp_path, train=train, register={"outs": [{"path": "r.json", "md5": "v1"}]}))
    assert key is not None and len(key) == 16
    assert lineage_key(_lock(tmp_path, train=train, register={"outs": [{"path": "r.json", "md5": "v2"}]})) == key
    edited = {**train, "deps": [{"path": "pipeline/ml/models.py", "md5": "c"}]}
    assert lineage_key(_lock(tmp_path, train=edited)) != key


def test_no_dvc_lock_no_key(tmp_path):
    assert lineage_key(tmp_path / "dvc.lock") is None
