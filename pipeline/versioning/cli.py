"""`mlops commit-run` and `mlops reproduce`: a run becomes a commit; a version is rebuilt from its commit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core import clock
from pipeline.core.command import DEFAULT_PARAMS, ParamsOpt, call, fail, load

RemoteOpt = Annotated[
    str | None, typer.Option(help="Git remote (name or URL) to push the branch to; default: local branches only.")
]


def commit_run_command(
    params: ParamsOpt = DEFAULT_PARAMS,
    name: Annotated[
        str | None, typer.Option(help="Run name: the branch is runs/<name> (default: a timestamp).")
    ] = None,
    remote: RemoteOpt = None,
) -> None:
    """After `dvc repro`: commit the workspace on runs/<name>, push git + DVC, tag the version, then challenger."""
    from pipeline.registry import store
    from pipeline.versioning.commit import commit_run
    from pipeline.versioning.git import Git

    cfg = load(params)
    root = Path.cwd()
    if not call(Git(root).is_repo):
        fail(f"{root} is not a git working copy with a commit: `git init && git add -A && git commit` first")
    store.use_project(root)
    run_name = name or "local-" + clock.utc_now().strftime("%Y%m%dT%H%M%SZ")
    result = call(commit_run, root, cfg, run_name, remote, None, typer.echo)
    typer.echo(json.dumps({k: result.get(k) for k in ("version", "commit", "ref", "remote", "alias")}))


def reproduce_command(
    version: Annotated[str, typer.Argument(help="Model version number to rebuild.")],
    params: ParamsOpt = DEFAULT_PARAMS,
    model: Annotated[str | None, typer.Option(help="Registered model name (default: register.model_name).")] = None,
    dest: Annotated[Path | None, typer.Option(help="Empty folder for the clone (default: ./reproduce-v<N>).")] = None,
    remote: Annotated[str | None, typer.Option(help="Clone URL (default: the git_remote tag of the version).")] = None,
) -> None:
    """Clone the version's commit, `dvc pull`, check `dvc repro` is up to date and the .tflite sha256 matches."""
    from pipeline.versioning.reproduce import reproduce

    model_name = model or load(params).register_.model_name
    report = call(reproduce, model_name, version, dest or Path(f"reproduce-v{version}"), typer.echo, remote)
    typer.echo(json.dumps(report, indent=2))
    if not report["ok"]:
        raise typer.Exit(1)
