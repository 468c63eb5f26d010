"""`mlops serve`'s options override the deploy: serving keys, validated like params.yaml."""

from __future__ import annotations

import pytest

from pipeline.core.config import ConfigError, DeployConfig, Params
from pipeline.delivery.server import serve_config


def test_cli_options_override_the_deploy_keys_and_are_validated():
    params = Params.model_validate({"deploy": {"serve_workers": 3, "batch_max_images": 16}})
    cfg = serve_config(params, serve_workers=None, serve_threads=4, batch_max_wait_ms=0.0)
    assert (cfg.serve_workers, cfg.serve_threads, cfg.batch_max_images, cfg.batch_max_wait_ms) == (3, 4, 16, 0.0)
    for bad in ({"serve_workers": 0}, {"serve_threads": -1}, {"batch_max_images": 0}, {"batch_max_wait_ms": -1.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            serve_config(params, **bad)


def test_unknown_or_invalid_serving_keys_in_params_are_refused():
    with pytest.raises(ValueError, match="batch_max_image"):
        DeployConfig.model_validate({"batch_max_image": 8})  # extra="forbid": a typo is an error
    with pytest.raises(ValueError, match="serve_workers"):
        DeployConfig.model_validate({"serve_workers": 65})


def test_registry_source_serves_the_alias_asked_for():
    from pipeline.delivery.server import _source

    assert _source(DeployConfig(), "clf", "registry").description == "models:/clf@champion"
    assert _source(DeployConfig(), "clf", "registry", "challenger").description == "models:/clf@challenger"
