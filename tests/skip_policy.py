"""CI never turns green by skipping: in CI every skip must match an entry of tests/expected_skips.txt.

Each entry names a test (node-id prefix) and the reason it may skip (a substring of the skip message), e.g. no
Docker on the CI machine. Any other skip — a missing dataset, a missing tool, a capability that should be there —
fails the session with the list, so a green CI means every other test ran. Strict when `CI` is set (`.ci/run`
sets it) or MLOPS_STRICT_SKIPS=1; elsewhere the unexpected skips are only listed in the summary.
MLOPS_EXPECTED_SKIPS points at another list (the plugin's own tests use it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

EXPECTED_SKIPS = Path(os.environ.get("MLOPS_EXPECTED_SKIPS") or Path(__file__).with_name("expected_skips.txt"))


@dataclass(frozen=True)
class Allowed:
    """One expected_skips.txt entry: `<node-id prefix> | <reason substring>`."""

    test: str
    reason: str

    def matches(self, nodeid: str, message: str) -> bool:
        return nodeid.startswith(self.test) and self.reason in message


def parse(text: str) -> list[Allowed]:
    """Entries of an expected-skips file; '#' starts a comment. ValueError naming the line if one is malformed."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        test, sep, reason = (part.strip() for part in line.partition("|"))
        if not sep or not test or not reason:
            raise ValueError(f"{EXPECTED_SKIPS.name}:{number}: expected '<test node id prefix> | <reason>', got {raw!r}")
        entries.append(Allowed(test, reason))
    return entries


def unexpected(skips: list[tuple[str, str]], allowed: list[Allowed]) -> list[tuple[str, str]]:
    """The (node id, message) skips no entry allows."""
    return [(nodeid, msg) for nodeid, msg in skips if not any(a.matches(nodeid, msg) for a in allowed)]


def strict() -> bool:
    """Whether an unexpected skip fails the session (in CI, or when asked)."""
    return bool(os.environ.get("CI")) or os.environ.get("MLOPS_STRICT_SKIPS") == "1"


def _message(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class SkipPolicy:
    """The pytest plugin: collects skips, lists the unexpected ones, fails the session for them when strict."""

    def __init__(self, allowed: list[Allowed]) -> None:
        self.allowed = allowed
        self.skips: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skips.append((report.nodeid, _message(report)))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if strict() and unexpected(self.skips, self.allowed) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        found = unexpected(self.skips, self.allowed)
        if not found:
            return
        verdict = "FAILED: CI must not turn green by skipping" if strict() else "listed only (strict in CI)"
        terminalreporter.write_sep("!" if strict() else "-", f"skips not in {EXPECTED_SKIPS.name}: {verdict}")
        for nodeid, message in found:
            terminalreporter.write_line(f"{nodeid}: {message}")
        terminalreporter.write_line(f"fix the cause, or add '<test> | <reason>  # why' to tests/{EXPECTED_SKIPS.name}")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipPolicy(parse(EXPECTED_SKIPS.read_text())), "mlops-skip-policy")
