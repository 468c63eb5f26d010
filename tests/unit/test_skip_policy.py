"""The skip policy (tests/skip_policy.py): in CI an unlisted skip fails the session; listed ones pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.skip_policy import EXPECTED_SKIPS, Allowed, parse, unexpected

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = '''
import pytest

def test_runs():
    assert True

def test_needs_docker():
    pytest.skip("no `docker compose` plugin here")

@pytest.mark.skipif(True, reason="needs the Fashion-MNIST files (make dataset)")
def test_needs_data():
    pass
'''


def test_parse_reads_entries_and_ignores_comments():
    entries = parse("# header\n\ntests/a.py::t | no docker  # why\n")
    assert entries == [Allowed("tests/a.py::t", "no docker")]


def test_parse_names_the_malformed_line():
    with pytest.raises(ValueError, match=r"expected_skips.txt:2: expected"):
        parse("# ok\ntests/a.py just a reason\n")


def test_unexpected_needs_both_the_test_and_the_reason_to_match():
    allowed = [Allowed("tests/a.py", "no docker")]
    skips = [("tests/a.py::t", "no docker here"), ("tests/a.py::u", "no dataset"), ("tests/b.py::t", "no docker")]
    assert unexpected(skips, allowed) == skips[1:]


def test_the_projects_list_parses_and_every_entry_names_an_existing_test_file():
    for entry in parse(EXPECTED_SKIPS.read_text()):
        assert (ROOT / entry.test.split("::")[0]).is_file(), entry


def _session(tmp_path: Path, allowed: str, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.skip_policy"]\n')
    (tmp_path / "skips.txt").write_text(allowed)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "MLOPS_STRICT_SKIPS")}
    env.update(PYTHONPATH=str(ROOT), MLOPS_EXPECTED_SKIPS=str(tmp_path / "skips.txt"), **({"CI": "true"} if ci else {}))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_in_ci_an_unlisted_skip_fails_the_session_and_names_it(tmp_path):
    result = _session(tmp_path, "test_sample.py::test_needs_docker | no `docker compose`\n", ci=True)
    assert result.returncode == 1, result.stdout
    assert "test_sample.py::test_needs_data: needs the Fashion-MNIST files" in result.stdout
    assert "test_needs_docker:" not in result.stdout  # the listed skip is accepted


def test_in_ci_listed_skips_pass(tmp_path):
    allowed = "test_sample.py::test_needs_docker | no `docker compose`\ntest_sample.py::test_needs_data | Fashion-MNIST\n"
    result = _session(tmp_path, allowed, ci=True)
    assert result.returncode == 0, result.stdout


def test_outside_ci_unlisted_skips_are_listed_but_do_not_fail(tmp_path):
    result = _session(tmp_path, "", ci=False)
    assert result.returncode == 0, result.stdout
    assert "listed only" in result.stdout and "test_needs_data" in result.stdout
