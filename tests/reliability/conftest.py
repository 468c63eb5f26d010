"""Reliability tier: shared tally of what was tried and what held, printed at the end of the run.

Each test adds to `tally` (bad inputs tried/caught, faults injected/survived, requests served/errors, latency);
`pytest_terminal_summary` prints the figures, so `pytest tests/reliability -q` ends with the numbers for the README.
"""

from __future__ import annotations


import pytest

from tests.reliability.common import build_template

_TALLY = pytest.StashKey[dict]()
_FAULTS = pytest.StashKey[list]()

_LABELS = [
    ("bad_inputs_tried", "bad inputs tried"),
    ("bad_inputs_caught", "bad inputs caught with a clear error (or accepted, where valid)"),
    ("faults_injected", "faults injected"),
    ("faults_survived", "faults survived (recovered or failed clearly, nothing lost)"),
    ("requests_sent", "requests sent under load"),
    ("requests_served", "requests answered as expected"),
    ("request_errors", "request errors"),
    ("malformed_rejected", "malformed requests rejected with 4xx"),
    ("load_seconds", "load test wall time (s)"),
    ("requests_per_second", "throughput (requests/s)"),
    ("p50_ms", "good-request latency p50 (ms)"),
    ("p99_ms", "good-request latency p99 (ms)"),
    ("unloaded_p50_ms", "hey, 1 client: latency p50 (ms)"),
    ("hey_rps_1", "hey, 1 client: requests/s"),
    ("hey_rps_32", "hey, 32 clients: requests/s"),
    ("rps_32_over_1", "hey: requests/s at 32 clients ÷ at 1 client (minimum 1.0)"),
    ("hey_p99_ms_32", "hey, 32 clients: latency p99 (ms)"),
    ("p99_over_unloaded_p50", "hey: p99 at 32 clients ÷ p50 at 1 client (limit 256)"),
    ("versions_seen", "served versions during the champion change"),
]


def pytest_configure(config):
    config.stash[_TALLY] = {}
    config.stash[_FAULTS] = []


@pytest.fixture(scope="session")
def tally(pytestconfig) -> dict:
    """A dict the tests add their counts to (printed in the terminal summary)."""
    return pytestconfig.stash[_TALLY]


@pytest.fixture(scope="session")
def fault_table(pytestconfig) -> list:
    """The seeded fault trials of this session (tests.reliability.trials.Trial), printed as a table at the end."""
    return pytestconfig.stash[_FAULTS]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from tests.reliability.trials import format_table

    trials = config.stash.get(_FAULTS, [])
    if trials:
        terminalreporter.write_sep("-", "fault trials (kill -9 at a seeded random moment)")
        for line in format_table(trials):
            terminalreporter.write_line(line)
    figures = config.stash.get(_TALLY, {})
    if not figures:
        return
    terminalreporter.write_sep("-", "reliability figures")
    for key, label in _LABELS:
        if key in figures:
            terminalreporter.write_line(f"{label}: {figures[key]}")


@pytest.fixture(scope="session")
def template(tmp_path_factory):
    """Stage outputs the register stage reads (tiny real Keras model + .tflite), built once per session."""
    return build_template(tmp_path_factory.mktemp("template"))
