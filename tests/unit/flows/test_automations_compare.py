"""flows.automations decides created/updated/unchanged by comparing the file's automation with the server's copy."""

import itertools
import subprocess
import sys
from pathlib import Path

from flows import automations

ROOT = Path(__file__).resolve().parents[3]
PERMUTATIONS_EQUAL = """
import itertools
from prefect.events.schemas.automations import AutomationCore
from flows import automations
shipped = automations.load(automations.ZOMBIE_FLOW_RUNS)
data = shipped.model_dump(mode="json")
for order in itertools.permutations(data["trigger"]["expect"]):
    copy = AutomationCore.model_validate({**data, "trigger": {**data["trigger"], "expect": list(order)}})
    assert automations._comparable(copy) == automations._comparable(shipped), order
"""


def test_a_server_copy_listing_the_expected_events_in_another_order_is_unchanged():
    """The server returns the trigger's event sets in its own order; under some hash seeds a set's iteration
    order follows insertion order, which made a re-apply report `updated` (seeds 7 and 12 showed it)."""
    for seed in ("7", "12"):
        done = subprocess.run(
            [sys.executable, "-c", PERMUTATIONS_EQUAL],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            timeout=120,
        )
        assert done.returncode == 0, f"PYTHONHASHSEED={seed}: {done.stderr[-2000:]}"


def test_a_different_window_or_event_set_is_a_change():
    """The comparison still sees what a file changes."""
    shipped = automations.load(automations.ZOMBIE_FLOW_RUNS)
    assert automations._comparable(
        automations.load(automations.ZOMBIE_FLOW_RUNS, within=45)
    ) != automations._comparable(shipped)
    fewer = shipped.model_copy(deep=True)
    fewer.trigger.expect = set(itertools.islice(shipped.trigger.expect, 2))
    assert automations._comparable(fewer) != automations._comparable(shipped)
