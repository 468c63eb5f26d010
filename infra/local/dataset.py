"""`make dataset`: materialise the pipeline's DVC-tracked inputs (data/raw/fashion-mnist/, data/accepted/).

data/raw/fashion-mnist/ gets exactly the bytes data/raw/fashion-mnist.dvc pins.

    dataset.py [--copy-from DIR] [--no-install]

Run from the project root with the venv's python (`dvc` on PATH). Already there: nothing is fetched. Missing:
`dvc pull` when a DVC remote is configured (a failure is tolerated), else the four IDX files copied from DIR
(default: where the Debian package dataset-fashion-mnist puts them; apt-get installs the package when that folder
is missing, unless --no-install). The folder is then checked against the md5 the .dvc file records, computed the
way DVC hashes a directory, and `dvc commit -f` puts it in the DVC cache so `dvc push` uploads it (the .dvc file
stays as it is: the hash is the same). A mismatch stops with what to do; this never rewrites the .dvc file and
never overwrites a folder it did not create.

data/accepted/ (monitoring batches accepted for retraining) is restored when missing: `dvc pull`, else created
empty when the pin is the empty folder (git keeps no empty folders). It is not checked: the monitor adds batches
that the next `dvc repro` records in data/accepted.dvc. When it matches its pin, it goes into the DVC cache too.
Imports nothing from pipeline/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

DVC_FILE = Path("data/raw/fashion-mnist.dvc")
ACCEPTED_DVC_FILE = Path("data/accepted.dvc")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
PACKAGE = "dataset-fashion-mnist"
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def say(message: str) -> None:
    """One line of progress, prefixed like the Makefile target that runs this."""
    print(f"make dataset: {message}", flush=True)


def pinned(dvc_file: Path) -> tuple[Path, str]:
    """The folder a single-output .dvc file tracks and the md5 it pins (`<hex>.dir`)."""
    out = yaml.safe_load(dvc_file.read_text())["outs"][0]
    return dvc_file.parent / out["path"], out["md5"]


def dir_md5(folder: Path) -> str:
    """DVC's md5 of a directory: md5 of its `.dir` listing (sorted relpath + md5 of each file, as JSON)."""
    entries = [
        {"md5": hashlib.md5(f.read_bytes()).hexdigest(), "relpath": f.relative_to(folder).as_posix()}
        for f in folder.rglob("*")
        if f.is_file()
    ]
    return listing_md5(entries)


def listing_md5(entries: list[dict[str, str]]) -> str:
    """The md5 DVC gives a `.dir` listing: of its JSON, sorted by relpath (`[]`: the empty folder)."""
    listing = json.dumps(sorted(entries, key=lambda e: e["relpath"]), sort_keys=True).encode()
    return hashlib.md5(listing).hexdigest() + ".dir"


def remote_configured() -> bool:
    """Whether this DVC project has a remote (project, local or global config)."""
    listed = subprocess.run(["dvc", "remote", "list"], capture_output=True, text=True)
    return listed.returncode == 0 and bool(listed.stdout.strip())


def from_remote(dvc_file: Path) -> bool:
    """`dvc pull` of the pinned folder; False (not an error) when the remote lacks it or cannot be reached."""
    if not remote_configured():
        return False
    say(f"dvc pull {dvc_file}")
    pulled = subprocess.run(["dvc", "pull", "-q", str(dvc_file)], capture_output=True, text=True)
    if pulled.returncode != 0:
        say(f"dvc pull {dvc_file} failed (remote unreachable or without these files)")
    return pulled.returncode == 0


def from_copy(folder: Path, source: Path, install: bool) -> None:
    """Copy the four IDX files from `source` into `folder` (installing the Debian package first when allowed)."""
    if source == DEBIAN_DIR and not source.is_dir() and install and shutil.which("apt-get"):
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        say(f"installing the Debian package {PACKAGE}")
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", PACKAGE], check=True)
    missing = [name for name in FILES if not (source / name).is_file()]
    if missing:
        raise SystemExit(
            f"make dataset: no DVC remote has {folder} and {source} lacks {', '.join(missing)}: "
            f"install the Debian package {PACKAGE}, or configure the DVC remote that holds the data "
            f"(`dvc remote add -d …`), or copy the files into {folder}/ yourself"
        )
    folder.mkdir(parents=True)
    for name in FILES:
        shutil.copyfile(source / name, folder / name)
    say(f"copied {len(FILES)} files from {source}")


def materialise(dvc_file: Path, source: Path, install: bool) -> None:
    """Make the tracked folder hold the pinned bytes and put them in the DVC cache; SystemExit on a mismatch."""
    folder, expected = pinned(dvc_file)
    created = not folder.exists()
    if created and not from_remote(dvc_file):
        shutil.rmtree(folder, ignore_errors=True)  # whatever a failed pull left behind
        from_copy(folder, source, install)
    actual = dir_md5(folder)
    if actual != expected:
        hint = (
            f"the copy just made was removed; check {source} (Debian: `apt-get install --reinstall {PACKAGE}`)"
            if created
            else f"restore the pinned bytes with `rm -r {folder} && make dataset`"
        )
        if created:
            shutil.rmtree(folder)
        raise SystemExit(
            f"make dataset: {folder} does not match {dvc_file}: md5 {actual}, pinned {expected}. "
            f"{hint}. To pin different data on purpose: `dvc add {folder}` and commit {dvc_file}."
        )
    subprocess.run(["dvc", "commit", "-f", "-q", str(dvc_file)], check=True)
    say(f"{folder} matches {dvc_file} (md5 {expected}) and is in the DVC cache")


def restore_accepted(dvc_file: Path) -> None:
    """Restore a missing data/accepted/ (pull, else empty when pinned empty); cache it when it matches its pin."""
    folder, expected = pinned(dvc_file)
    if not folder.exists() and not from_remote(dvc_file):
        shutil.rmtree(folder, ignore_errors=True)
        if expected != listing_md5([]):
            raise SystemExit(
                f"make dataset: {folder} is missing and {dvc_file} pins batches ({expected}) that only "
                "a DVC remote holds: configure that remote (`dvc remote add -d …`) and rerun"
            )
        folder.mkdir(parents=True)
        say(f"created the empty {folder} that {dvc_file} pins")
    if dir_md5(folder) == expected:
        subprocess.run(["dvc", "commit", "-f", "-q", str(dvc_file)], check=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the options and materialise the inputs whose .dvc file exists; 0 on success."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copy-from", type=Path, default=DEBIAN_DIR, help="the IDX files to copy when no remote has them")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get")
    args = ap.parse_args(argv)
    if DVC_FILE.is_file():
        materialise(DVC_FILE, args.copy_from, install=not args.no_install)
    if ACCEPTED_DVC_FILE.is_file():
        restore_accepted(ACCEPTED_DVC_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
