"""What every thin typer command shares: reading params.yaml, and turning expected failures into exit code 2
with a clear message (never a traceback). Stage modules and `pipeline/cli.py` both build on it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer

from pipeline.core.config import ConfigError, Params, load_params
from pipeline.core.errors import StageError

T = TypeVar("T")

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read (the single source of parameters).")]
DEFAULT_PARAMS = Path("params.yaml")

_CONNECTION_SIGNS = (
    "Max retries exceeded",
    "Connection refused",
    "timed out",
    "ConnectionError",
    "Failed to establish",
    "RemoteDisconnected",
    "Connection aborted",
)
_REASONS = ("Connection refused", "timed out", "Name or service not known", "Connection aborted")


def fail(message: str) -> NoReturn:
    """Print `error: message` in red on stderr and exit with code 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def load(params: Path) -> Params:
    """The validated params.yaml at `params`, or exit 2 naming every bad field."""
    try:
        return load_params(params)
    except ConfigError as exc:
        fail(str(exc))


def call(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Call a stage function, turning expected failures into a clear message and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except (StageError, FileNotFoundError, ConfigError) as exc:
        fail(str(exc))
    except Exception as exc:
        message = mlflow_unreachable(exc)
        if message is None:
            raise
        fail(message)


def mlflow_unreachable(exc: Exception) -> str | None:
    """A clear message when `exc` is MLflow failing to reach its tracking server; None for anything else."""
    errors = sys.modules.get("mlflow.exceptions")  # only if MLflow is in use (never imported just for this)
    if errors is None or not isinstance(exc, errors.MlflowException):
        return None
    text = str(exc)
    if not text.startswith("API request to") or not any(s in text for s in _CONNECTION_SIGNS):
        return None
    uri = os.environ.get("MLFLOW_TRACKING_URI", "?")
    reason = next((r for r in _REASONS if r in text), "connection failed")
    return (
        f"cannot reach the MLflow tracking server at {uri} ({reason}). Start it, or point MLFLOW_TRACKING_URI "
        f"at a running server (unset it to use the embedded store mlflow/mlflow.db), then rerun."
    )


def path_or(value: Path | None, default: str) -> Path:
    """An option's value, or the params.yaml `paths:` entry when the option was not given."""
    return Path(value) if value is not None else Path(default)
