"""Run workspaces on real git repositories: base selection, snapshot commits, the runs/latest lease, merges."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from pipeline.versioning.git import Git, GitError, redact
from pipeline.versioning.workspace import LATEST, advance_latest, checkout_base, merge_commit, publish, run_ref


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def remote(tmp_path) -> str:
    """A bare repository whose main holds params.yaml and code.py."""
    seed = tmp_path / "seed"
    seed.mkdir()
    _git(seed, "init", "-q", "-b", "main")
    (seed / "params.yaml").write_text("epochs: 1\n")
    (seed / "code.py").write_text("x = 1\n")
    (seed / ".gitignore").write_text("/ignored/\n")
    _git(seed, "add", "-A")
    _git(seed, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "seed")
    bare = tmp_path / "remote.git"
    _git(tmp_path, "clone", "-q", "--bare", str(seed), str(bare))
    return f"file://{bare}"


def _clone(remote: str, dest: Path) -> Git:
    subprocess.run(["git", "clone", "-q", remote, str(dest)], check=True, capture_output=True)
    return Git(dest)


def _push_new_code(remote: str, dest: Path, code: str) -> None:
    """A developer pushes a new commit to the default branch (after a run exists)."""
    dev = _clone(remote, dest)
    (dev.root / "code.py").write_text(code)
    _git(dev.root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "new code")
    _git(dev.root, "push", "-q", "origin", "main")


def _run(git: Git, remote: str, name: str, edit: dict[str, str]) -> tuple[str, dict]:
    base = checkout_base(git, remote, lambda _: None)
    for file, text in edit.items():
        (git.root / file).write_text(text)
    commit = git.snapshot(f"run {name}")
    return commit, publish(git, remote, commit, name, base, lambda _: None)


def test_first_run_starts_from_the_default_branch_and_later_runs_from_runs_latest(remote, tmp_path):
    first = _clone(remote, tmp_path / "w1")
    commit, where = _run(first, remote, "one", {"dvc.lock": "lock 1\n"})
    assert where == {"ref": "runs/one", "remote": remote, "latest": commit}
    second = _clone(remote, tmp_path / "w2")
    base = checkout_base(second, remote, lambda _: None)
    assert base.commit == commit and base.source == "runs/latest"
    assert (second.root / "dvc.lock").read_text() == "lock 1\n"


def test_new_code_on_the_default_branch_is_merged_into_the_last_run(remote, tmp_path):
    run_commit, _ = _run(_clone(remote, tmp_path / "w1"), remote, "one", {"dvc.lock": "lock 1\n"})
    _push_new_code(remote, tmp_path / "dev", "x = 2\n")
    worker = _clone(remote, tmp_path / "w2")
    base = checkout_base(worker, remote, lambda _: None)
    assert base.source == "runs/latest + main" and base.latest == run_commit
    assert (worker.root / "code.py").read_text() == "x = 2\n"
    assert (worker.root / "dvc.lock").read_text() == "lock 1\n"


def test_snapshot_commits_the_workspace_without_moving_head_or_the_index(remote, tmp_path):
    git = _clone(remote, tmp_path / "w")
    head = git.head()
    (git.root / "params.yaml").write_text("epochs: 3\n")
    (git.root / "metrics.json").write_text("{}\n")
    (git.root / "ignored").mkdir()
    (git.root / "ignored" / "big.bin").write_text("x")
    commit = git.snapshot("run")
    assert git.head() == head and _git(git.root, "diff", "--cached", "--name-only") == ""
    assert set(_git(git.root, "diff", "--name-only", head, commit).split()) == {"params.yaml", "metrics.json"}
    assert git.snapshot("again", reuse=commit) == commit  # same tree: the earlier snapshot, not a new commit


def test_two_runs_from_the_same_base_both_keep_their_commit_and_latest_holds_both(remote, tmp_path):
    a, b = _clone(remote, tmp_path / "a"), _clone(remote, tmp_path / "b")
    base_a = checkout_base(a, remote, lambda _: None)
    base_b = checkout_base(b, remote, lambda _: None)
    (a.root / "accepted.dvc").write_text("md5: 1\n")  # e.g. the monitor's accepted data
    (b.root / "dvc.lock").write_text("lock b\n")  # e.g. a training run
    commit_a, commit_b = a.snapshot("a"), b.snapshot("b")
    assert publish(a, remote, commit_a, "a", base_a, lambda _: None)["latest"] == commit_a
    latest = publish(b, remote, commit_b, "b", base_b, lambda _: None)["latest"]  # lease lost: merged
    assert latest not in (commit_a, commit_b)
    assert b.is_ancestor(commit_a, latest) and b.is_ancestor(commit_b, latest)
    assert {_git(b.root, "ls-remote", remote, f"refs/heads/runs/{n}").split()[0] for n in "ab"} == {commit_a, commit_b}


def test_conflicting_runs_leave_runs_latest_with_the_first(remote, tmp_path):
    a, b = _clone(remote, tmp_path / "a"), _clone(remote, tmp_path / "b")
    base_a, base_b = (checkout_base(g, remote, lambda _: None) for g in (a, b))
    (a.root / "dvc.lock").write_text("lock a\n")
    (b.root / "dvc.lock").write_text("lock b\n")
    commit_a, commit_b = a.snapshot("a"), b.snapshot("b")
    publish(a, remote, commit_a, "a", base_a, lambda _: None)
    said: list[str] = []
    assert publish(b, remote, commit_b, "b", base_b, said.append)["latest"] is None
    assert b.remote_head(remote, LATEST) == commit_a and "conflicts" in said[-1]
    assert merge_commit(b, commit_a, commit_b, "m") is None


def test_the_lease_serialises_concurrent_pushes(remote, tmp_path):
    """Eight runs from one base push at once: every run branch lands and runs/latest contains all of them."""
    gits = [_clone(remote, tmp_path / f"w{i}") for i in range(8)]
    bases = [checkout_base(g, remote, lambda _: None) for g in gits]
    commits = []
    for i, g in enumerate(gits):
        (g.root / f"batch-{i}.dvc").write_text(f"md5: {i}\n")
        commits.append(g.snapshot(f"run {i}"))
    threads = [
        threading.Thread(target=advance_latest, args=(g, remote, c, b.latest, lambda _: None, 20))
        for g, c, b in zip(gits, commits, bases, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latest = gits[0].remote_head(remote, LATEST)
    assert latest is not None
    gits[0].fetch(remote, LATEST)
    assert all(gits[0].is_ancestor(c, latest) for c in commits)


def test_run_ref_and_redact():
    assert run_ref("crafty owl/7: retry") == "refs/heads/runs/crafty-owl-7-retry"
    assert redact("https://user:ghp_secret@github.example/x.git failed") == "https://***@github.example/x.git failed"


def test_git_errors_name_the_command_without_credentials(tmp_path):
    with pytest.raises(GitError, match="ls-remote") as info:
        Git(tmp_path)("ls-remote", "https://user:s3cr3t@127.0.0.1:1/none.git")
    assert "s3cr3t" not in str(info.value)


def test_a_shallow_clone_like_prefects_pull_step_still_finds_the_last_run(remote, tmp_path):
    run_commit, _ = _run(_clone(remote, tmp_path / "w1"), remote, "one", {"dvc.lock": "lock 1\n"})
    _push_new_code(remote, tmp_path / "dev", "x = 3\n")
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", remote, str(shallow)], check=True, capture_output=True)
    base = checkout_base(Git(shallow), remote, lambda _: None)
    assert base.source == "runs/latest + main" and base.latest == run_commit
