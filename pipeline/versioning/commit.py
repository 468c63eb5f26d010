"""End of a training run: the workspace becomes a commit, pushed with its data, before any alias moves.

Order (nothing unreproducible is ever promoted): snapshot commit of the workspace → `dvc push --run-cache` →
push `runs/<name>` (and advance `runs/latest`) → tag the version with the commit → `challenger` when blessed and
not an experiment. A failed push tags the version `push-failed`, sets no alias and re-raises.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core import io
from pipeline.core.config import Params
from pipeline.registry import lineage
from pipeline.registry.aliases import CHALLENGER, CHAMPION
from pipeline.versioning.git import Git
from pipeline.versioning.workspace import Base, Log, dvc_push, move_branch, publish

CHAMPION_BRANCH = "champion"


def commit_message(name: str, record: dict) -> str:
    """Subject + body of a run commit: what it registered and the lineage key."""
    return (
        f"run {name}: {record['model_name']} v{record['version']} (blessed={str(record['blessed']).lower()})\n\n"
        f"lineage key: {record.get('lineage_key')}\nmodel sha256: {record.get('sha256')}\n"
        f"MLflow run: {record.get('run_id')}\n"
    )


def commit_run(root: Path, params: Params, name: str, remote: str | None, base: Base | None, log: Log) -> dict:
    """Commit the run in `root` (after `dvc repro`), push it, then tag its model version and alias it.

    Reads `params.paths.registration` (written by the register stage). Writes: a commit on runs/<name> (local,
    and on `remote` when given; `runs/latest` advances there), DVC remote objects, version tags, the alias.
    """
    record = io.read_json(root / params.paths.registration)
    model, version = record["model_name"], str(record["version"])
    tags = lineage.version_tags(model, version)
    earlier = tags.get("git_commit") if tags.get("git_dirty") == "false" else None
    git = Git(root)
    commit = git.snapshot(commit_message(name, record), reuse=earlier)
    if commit == earlier:
        log(f"{model} v{version} is already commit {commit[:12]} ({tags.get('git_ref')}); nothing to do")
        return {**record, "commit": commit, "ref": tags.get("git_ref"), "alias": None, "already": True}
    try:
        pushed = dvc_push(root, log)
        where = publish(git, remote, commit, name, base, log)
    except Exception as exc:
        lineage.mark_push_failed(model, version, str(exc))
        log(f"push failed: {model} v{version} tagged {lineage.PUSH_FAILED_TAG}, no alias")
        raise
    lineage.mark_committed(model, version, commit, where["ref"], where["remote"])
    experiment = tags.get(lineage.EXPERIMENT_TAG, "none") != "none"
    alias = CHALLENGER if record["blessed"] and not experiment else None
    if alias:
        lineage.make_challenger(model, version)
    log(f"{model} v{version} = commit {commit[:12]} on {where['ref']}; alias: {alias or 'none'}")
    return {**record, "commit": commit, **where, "dvc_pushed": pushed, "alias": alias}


def move_champion_branch(root: Path, model_name: str, remote: str | None, log: Log) -> str | None:
    """Point branch `champion` (locally, and on `remote`) at the commit of the champion version: git shows what is
    in production. The commit, or None when the champion has no clean commit or `root` is not a git repository.
    """
    from pipeline.registry import store

    champion = store.version_by_alias(model_name, CHAMPION)
    tags = dict(champion.tags or {}) if champion is not None else {}
    commit = tags.get("git_commit") if tags.get("git_dirty") == "false" else None
    git = Git(root)
    if commit is None or not git.is_repo():
        log(f"{model_name}: champion has no pushed commit; branch {CHAMPION_BRANCH} left as is")
        return None
    return commit if move_branch(git, CHAMPION_BRANCH, commit, remote, log) else None
