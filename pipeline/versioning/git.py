"""Thin git wrapper for run workspaces: plumbing commands with clear errors and no credentials in messages."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from pipeline.core.errors import StageError

# commits made by the pipeline; GIT_AUTHOR_*/GIT_COMMITTER_* or the repository's user.* settings win
DEFAULT_IDENTITY = {"name": "mlops-pipeline", "email": "mlops-pipeline@localhost"}
_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


class GitError(StageError):
    """A git command failed; the message holds the command and git's own words (credentials removed)."""


def redact(text: str) -> str:
    """`text` without user:token@ parts of URLs, so clone URLs with a token never reach a log."""
    return _CREDENTIALS.sub(r"\1***@", text)


class Git:
    """git commands run in one working copy."""

    def __init__(self, root: Path):
        """`root`: the working copy's top directory."""
        self.root = Path(root)

    def __call__(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        """Run `git <args>` in the working copy; stdout, stripped. GitError on failure when `check`."""
        result = subprocess.run(
            ["git", *args],
            cwd=self.root,
            env={**os.environ, **self._identity(), **(env or {})},
            capture_output=True,
            text=True,
        )
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()[-2000:]
            raise GitError(redact(f"`git {' '.join(args)}` failed in {self.root}: {detail}"))
        return result.stdout.strip()

    def ok(self, *args: str) -> bool:
        """True when `git <args>` exits 0."""
        return subprocess.run(["git", *args], cwd=self.root, capture_output=True).returncode == 0

    def _identity(self) -> dict[str, str]:
        """Author/committer for pipeline commits when neither the environment nor git config names one."""
        env: dict[str, str] = {}
        for key in ("name", "email"):
            configured = subprocess.run(
                ["git", "config", f"user.{key}"], cwd=self.root, capture_output=True, text=True
            ).stdout.strip()
            for role in ("AUTHOR", "COMMITTER"):
                var = f"GIT_{role}_{key.upper()}"
                if not os.environ.get(var) and not configured:
                    env[var] = DEFAULT_IDENTITY[key]
        return env

    def head(self) -> str:
        """The commit checked out."""
        return self("rev-parse", "HEAD")

    def is_repo(self) -> bool:
        """True inside a git working copy with at least one commit."""
        return self.ok("rev-parse", "--verify", "HEAD")

    def dirty(self) -> bool:
        """True when tracked or untracked (not ignored) files differ from HEAD."""
        return bool(self("status", "--porcelain"))

    def remote_url(self, remote: str) -> str:
        """The fetch URL of `remote` (a name or a URL), credentials removed."""
        url = self("remote", "get-url", remote, check=False) or remote
        return redact(url)

    def remote_head(self, remote: str, ref: str) -> str | None:
        """The commit `ref` (e.g. refs/heads/runs/latest) points to on `remote`; None when it does not exist."""
        out = self("ls-remote", remote, ref)
        return out.split()[0] if out else None

    def default_branch(self, remote: str) -> str:
        """The branch the remote's HEAD names (e.g. main)."""
        out = self("ls-remote", "--symref", remote, "HEAD")
        for line in out.splitlines():
            if line.startswith("ref:"):
                return line.split()[1].removeprefix("refs/heads/")
        raise GitError(f"{self.remote_url(remote)} has no default branch (HEAD); push one first")

    def fetch(self, remote: str, *refs: str) -> None:
        """Fetch `refs` (full ref names) from `remote` into refs/remotes-like local refs under refs/mlops/."""
        specs = [f"+{ref}:refs/mlops/{ref.removeprefix('refs/')}" for ref in refs]
        self("fetch", "--quiet", remote, *specs)

    def is_ancestor(self, older: str, newer: str) -> bool:
        """True when `older` is reachable from `newer`."""
        return self.ok("merge-base", "--is-ancestor", older, newer)

    def snapshot(self, message: str, reuse: str | None = None) -> str:
        """Commit the whole working copy (tracked + untracked, not ignored) on top of HEAD; the commit's sha.

        Uses a private index, so the checked-out branch, the user's index and the files are left untouched:
        the commit holds exactly the files that produced a run. No new commit when nothing differs from HEAD
        (HEAD is returned) or from `reuse`, an earlier snapshot (returned).
        """
        git_dir = Path(self("rev-parse", "--absolute-git-dir"))
        index = git_dir / f"mlops-index-{os.getpid()}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            self("read-tree", "HEAD", env=env)
            self("add", "--all", ".", env=env)
            tree = self("write-tree", env=env)
        finally:
            index.unlink(missing_ok=True)
        head = self.head()
        if tree == self("rev-parse", "HEAD^{tree}"):
            return head
        if reuse and self("rev-parse", "--verify", "--quiet", f"{reuse}^{{tree}}", check=False) == tree:
            return reuse
        return self("commit-tree", tree, "-p", head, "-m", message)

    def push(self, remote: str, commit: str, ref: str, expect: str | None = None, lease: bool = False) -> bool:
        """Point `ref` on `remote` at `commit`. With `lease`, only if it still points at `expect` (None: absent).

        Returns False when the lease was lost (someone moved the ref first); other failures raise GitError.
        """
        args = ["push", "--porcelain", remote, f"{commit}:{ref}"]
        if lease:
            args.insert(1, f"--force-with-lease={ref}:{expect or ''}")
        result = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True)
        if result.returncode == 0:
            return True
        text = result.stdout + result.stderr
        if lease and ("stale info" in text or "rejected" in text):
            return False
        raise GitError(redact(f"`git push {remote} {ref}` failed: {text.strip()[-2000:]}"))
