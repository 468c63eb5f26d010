"""A run's workspace: check out the base commit from the git remote, get its data with DVC, publish the result.

A run starts from the commit of the last successful run (branch `runs/latest` on the remote), with the default
branch merged in when it has moved on (new code); the default branch alone when no run exists yet. It ends as
a commit on `runs/<run name>`; `runs/latest` then advances to it — with a lease, so two runs at once never
overwrite each other: the later one merges (no conflicts) or leaves `runs/latest` where the other put it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import StageError
from pipeline.core.process import run_streaming, tool_env
from pipeline.versioning.git import Git, GitError

LATEST = "refs/heads/runs/latest"
DVC_REMOTE_ENV = "MLOPS_DVC_REMOTE"  # e.g. s3://dvc-store/mlops-pipeline: the DVC remote of a fresh clone
DVC_REMOTE_NAME = "mlops"
Log = Callable[[str], object]


@dataclass(frozen=True)
class Base:
    """The commit a run starts from, what it came from, and the `runs/latest` it saw (the push lease)."""

    commit: str
    source: str
    latest: str | None


def run_ref(name: str) -> str:
    """The branch of one run: refs/heads/runs/<name>, the name reduced to characters git accepts everywhere."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    return f"refs/heads/runs/{slug}"


def merge_commit(git: Git, ours: str, theirs: str, message: str) -> str | None:
    """A merge commit of two commits made without touching the working tree; None when they conflict."""
    result = subprocess.run(
        ["git", "merge-tree", "--write-tree", ours, theirs], cwd=git.root, capture_output=True, text=True
    )
    if result.returncode != 0:
        return None
    tree = result.stdout.split()[0]
    return git("commit-tree", tree, "-p", ours, "-p", theirs, "-m", message)


def checkout_base(git: Git, remote: str, log: Log) -> Base:
    """Fetch and check out (detached) the commit this run starts from."""
    default = git.default_branch(remote)
    latest = git.remote_head(remote, LATEST)
    if git("rev-parse", "--is-shallow-repository") == "true":  # Prefect's git_clone clones with --depth 1;
        git("fetch", "--quiet", "--unshallow", remote)  # ancestry and merges need the history
    git.fetch(remote, f"refs/heads/{default}", *([LATEST] if latest else []))
    tip = git("rev-parse", f"refs/mlops/heads/{default}")
    base = Base(tip, default, latest)
    if latest is not None and git.is_ancestor(tip, latest):
        base = Base(latest, "runs/latest", latest)
    elif latest is not None:
        merged = merge_commit(git, latest, tip, f"Merge {default} into runs/latest")
        if merged is None:
            log(f"runs/latest and {default} conflict: starting from {default} alone (stages may rerun)")
        else:
            base = Base(merged, f"runs/latest + {default}", latest)
    git("checkout", "--quiet", "--detach", base.commit)
    log(f"base: {base.commit[:12]} ({base.source})")
    return base


def advance_latest(git: Git, remote: str, commit: str, expect: str | None, log: Log, attempts: int = 5) -> str | None:
    """Move `runs/latest` on the remote to include `commit`; the commit it points to, None when left as is."""
    for _ in range(attempts):
        if git.push(remote, commit, LATEST, expect=expect, lease=True):
            return commit
        expect = git.remote_head(remote, LATEST)
        if expect is None:
            continue
        git.fetch(remote, LATEST)
        if git.is_ancestor(commit, expect):
            return expect
        merged = merge_commit(git, expect, commit, "Merge run into runs/latest")
        if merged is None:
            log(f"runs/latest moved to {expect[:12]} and conflicts with this run: left there")
            return None
        commit = merged
    log("runs/latest kept moving; left as is")
    return None


def dvc_remote_configured(root: Path) -> bool:
    """True when the workspace has a DVC remote (so a push or pull has somewhere to go)."""
    out = subprocess.run(["dvc", "remote", "list"], cwd=root, env=tool_env(), capture_output=True, text=True)
    return out.returncode == 0 and bool(out.stdout.strip())


def configure_dvc_remote(root: Path, log: Log) -> bool:
    """Give a fresh clone the DVC remote named by $MLOPS_DVC_REMOTE (endpoint: $AWS_ENDPOINT_URL) unless it
    has one. In .dvc/config.local, which is never committed. True when a remote is configured afterwards.
    """
    if dvc_remote_configured(root):
        return True
    url = os.environ.get(DVC_REMOTE_ENV)
    if not url:
        return False
    dvc = ["dvc", "remote"]
    run_streaming([*dvc, "add", "--local", "--default", "--force", DVC_REMOTE_NAME, url], root, log)
    if os.environ.get("AWS_ENDPOINT_URL") and url.startswith("s3://"):
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        run_streaming([*dvc, "modify", "--local", DVC_REMOTE_NAME, "endpointurl", endpoint], root, log)
    log(f"DVC remote {DVC_REMOTE_NAME}: {url} (from ${DVC_REMOTE_ENV})")
    return True


def dvc_pull(root: Path, log: Log, targets: tuple[str, ...] = ()) -> bool:
    """`dvc pull` what the checked-out commit's dvc.lock and .dvc files name (missing objects are rebuilt)."""
    if not dvc_remote_configured(root):
        log("no DVC remote: nothing to pull")
        return False
    run_streaming(["dvc", "pull", "--allow-missing", *targets], root, log)
    return True


def require_inputs(root: Path) -> None:
    """StageError naming every committed .dvc input (raw dataset, accepted data) that the pull did not restore."""
    import yaml

    tracked = subprocess.run(["git", "ls-files", "*.dvc"], cwd=root, capture_output=True, text=True).stdout.split()
    missing = [
        f"{file} → {(Path(file).parent / out['path']).as_posix()}"
        for file in tracked
        for out in (yaml.safe_load((root / file).read_text()) or {}).get("outs", [])
        if not (root / Path(file).parent / out["path"]).exists()
    ]
    if missing:
        raise StageError(
            f"the DVC remote lacks committed inputs: {'; '.join(missing)}. Push them from a workspace that has "
            "them (`make dataset` then `dvc push <file>.dvc`; infra/local/stack.sh up does it for the local stack)."
        )


def dvc_push(root: Path, log: Log) -> bool:
    """`dvc push --run-cache`: the data, models and run cache of the commit; False when there is no remote."""
    if not dvc_remote_configured(root):
        log("no DVC remote configured; nothing pushed")
        return False
    run_streaming(["dvc", "push", "--run-cache"], root, log)
    return True


def publish(git: Git, remote: str | None, commit: str, name: str, base: Base | None, log: Log) -> dict:
    """Point runs/<name> at `commit` (locally, and on `remote` when given) and advance runs/latest there."""
    ref = run_ref(name)
    git("update-ref", ref, commit)
    if remote is None:
        return {"ref": ref.removeprefix("refs/heads/"), "remote": None, "latest": None}
    git("push", "--quiet", remote, f"+{commit}:{ref}")
    latest = advance_latest(git, remote, commit, base.latest if base else None, log)
    return {"ref": ref.removeprefix("refs/heads/"), "remote": git.remote_url(remote), "latest": latest}


def move_branch(git: Git, branch: str, commit: str, remote: str | None, log: Log) -> bool:
    """Point `branch` at `commit` locally (when the commit is here) and on `remote`; False when it is unknown."""
    if remote is not None:
        with contextlib.suppress(GitError):  # a commit only on the remote: fetch it by its run branch
            git("fetch", "--quiet", remote, "+refs/heads/runs/*:refs/mlops/heads/runs/*")
    if not git.ok("cat-file", "-e", f"{commit}^{{commit}}"):
        log(f"commit {commit[:12]} is not in {git.root}: branch {branch} not moved")
        return False
    git("update-ref", f"refs/heads/{branch}", commit)
    if remote is not None:
        git("push", "--quiet", remote, f"+{commit}:refs/heads/{branch}")
    log(f"branch {branch} -> {commit[:12]}" + (f" (pushed to {git.remote_url(remote)})" if remote else ""))
    return True
