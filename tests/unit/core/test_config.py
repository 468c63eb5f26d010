"""params.yaml is validated before any work: unknown keys and wrong types fail with the field named."""

from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, Params, load_params

ROOT = Path(__file__).resolve().parents[3]


def test_project_params_yaml_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.ingest.dataset == "fashion-mnist"
    assert params.evaluate.deploy_variant == "int8"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train:\n  epochz: 3\n", "train.epochz"),
        ("train:\n  epochs: many\n", "train.epochs"),
        ("ingest:\n  dataset: mnist-ish\n", "ingest.dataset"),
        ("evaluate:\n  min_accuracy: 1.5\n", "evaluate.min_accuracy"),
        ("ingest:\n  url: ftp://example/x\n", "ingest.url"),
        ("bogus_section: {}\n", "bogus_section"),
        ("ingest:\n  val_fraction: 0.45\n  stream_fraction: 0.45\n", "at least 20%"),
        ("- just\n- a list\n", "mapping"),
        ("train: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_params_name_the_field(tmp_path, text, fragment):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


def test_missing_params_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="--params"):
        load_params(tmp_path / "nope.yaml")


def test_sections_are_frozen():
    params = Params()
    with pytest.raises(Exception):
        params.train.epochs = 3  # type: ignore[misc]


def test_cli_rejects_bad_params_before_work(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    (tmp_path / "params.yaml").write_text("train:\n  epochs: -1\n")
    result = CliRunner().invoke(app, ["train", "--params", str(tmp_path / "params.yaml"),
                                      "--data", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "train.epochs" in result.output
