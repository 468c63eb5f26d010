"""The Prefect automations this project ships (infra/prefect/automations/*.yaml), applied idempotently.

    python -m flows.automations [--within SECONDS] [FILE ...]     # needs PREFECT_API_URL

Each file holds one automation (the shape `prefect automation create --from-file` reads). An automation of the
same name on the server is updated to match the file (duplicates of that name are removed); a missing one is
created; a matching one is left alone. infra/local/stack.sh runs this on `up`; tests call `apply()`.
`--within` overrides the trigger's window (a drill with a short window); the files keep the production value.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

import yaml
from prefect import get_client
from prefect.events.schemas.automations import AutomationCore, EventTrigger

AUTOMATIONS_DIR = Path(__file__).resolve().parents[1] / "infra" / "prefect" / "automations"
ZOMBIE_FLOW_RUNS = AUTOMATIONS_DIR / "zombie-flow-runs.yaml"


def load(path: Path, within: float | None = None) -> AutomationCore:
    """The automation in `path`, its event trigger's window replaced by `within` seconds when given."""
    automation = AutomationCore.model_validate(yaml.safe_load(Path(path).read_text()))
    if within is not None:
        if not isinstance(automation.trigger, EventTrigger):
            raise ValueError(f"{path}: --within needs an event trigger, not {automation.trigger.type}")
        automation.trigger.within = timedelta(seconds=within)
    return automation


def _comparable(automation: AutomationCore) -> dict:
    """The fields a file defines (server-side ids and timestamps left out), sets kept as sets.

    A JSON dump would turn the trigger's `expect`/`for_each` sets into lists whose order can follow insertion
    order (hash collisions, PYTHONHASHSEED), so a server copy listing them differently would compare unequal.
    """
    return AutomationCore.model_validate(automation.model_dump()).model_dump(exclude={"trigger": {"id"}})


def apply_one(automation: AutomationCore) -> str:
    """Create or update the server's automation of that name to match `automation`: created/updated/unchanged."""
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(automation.name)
        if not existing:
            client.create_automation(automation)
            return "created"
        keep, *extra = existing
        for duplicate in extra:
            client.delete_automation(duplicate.id)
        if _comparable(keep) == _comparable(automation) and not extra:
            return "unchanged"
        client.update_automation(keep.id, automation)
        return "updated"


def apply(paths: list[Path] | None = None, within: float | None = None) -> dict[str, str]:
    """Apply every automation file (default: all of infra/prefect/automations); {name: what was done}."""
    files = paths or sorted(AUTOMATIONS_DIR.glob("*.yaml"))
    return {auto.name: apply_one(auto) for auto in (load(path, within) for path in files)}


def main(argv: list[str] | None = None) -> int:
    """CLI: apply the files and print one line per automation."""
    summary = (__doc__ or "Apply the shipped Prefect automations.").splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m flows.automations", description=summary)
    parser.add_argument("files", nargs="*", type=Path, help="automation YAML files (default: all shipped ones)")
    parser.add_argument("--within", type=float, default=None, help="override the trigger window (seconds)")
    args = parser.parse_args(argv)
    for name, outcome in apply(args.files or None, args.within).items():
        print(f"Prefect automation '{name}': {outcome}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
