"""The Prefect automations this project ships (infra/prefect/automations/*.yaml), applied idempotently.

    python -m flows.automations [--within SECONDS] [FILE ...]     # needs PREFECT_API_URL

Each file holds one automation (the shape `prefect automation create --from-file` reads). An automation of the
same name on the server is updated to match the file (duplicates of that name are removed); a missing one is
created; a matching one is left alone. infra/local/stack.sh runs this on `up`; tests call `apply()`.
`--within` overrides the trigger's window (a drill with a short window); the files keep the production value.

A file names the server objects its actions use by name; they are resolved to ids here, at apply time:
`$deployment:<flow>/<deployment>` (a deployment of prefect.yaml: deploy first) and
`$block:<block type slug>/<block name>` (a notification block). The approval notifications' block,
`$block:custom-webhook/mlops-approval`, is created or updated here from MLOPS_APPROVAL_WEBHOOK_URL (POST of
{"text", "subject", "body"} JSON); without that variable the automations that notify through it are not
applied, and the CLI says so. A file whose references do not resolve is not applied either (said, exit 0).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from prefect import get_client
from prefect.events.schemas.automations import AutomationCore, EventTrigger

AUTOMATIONS_DIR = Path(__file__).resolve().parents[1] / "infra" / "prefect" / "automations"
ZOMBIE_FLOW_RUNS = AUTOMATIONS_DIR / "zombie-flow-runs.yaml"
AWAITING_APPROVAL = AUTOMATIONS_DIR / "promotion-awaiting-approval.yaml"
APPROVAL_REMINDER = AUTOMATIONS_DIR / "promotion-approval-reminder.yaml"
PROMOTION_TIMEOUT = AUTOMATIONS_DIR / "promotion-timeout.yaml"
PROMOTION_DECIDED = AUTOMATIONS_DIR / "promotion-decided.yaml"

WEBHOOK_ENV = "MLOPS_APPROVAL_WEBHOOK_URL"
APPROVAL_BLOCK = "custom-webhook/mlops-approval"  # the notification block apply() manages (from WEBHOOK_ENV)
_REFERENCE = re.compile(r"^\$(block|deployment):\s*(\S+/\S+)\s*$")


class Unresolved(LookupError):
    """A file's reference names nothing on the server (or needs a setting that is missing): not applied."""


@dataclass
class Resolver:
    """Turns `$block:` / `$deployment:` references into ids through the Prefect API (each looked up once)."""

    client: Any
    webhook_url: str | None
    found: dict[str, str] = field(default_factory=dict)
    approval_block: str | None = None  # what ensuring the managed block did: created/updated/unchanged

    def precheck(self, refs: list[tuple[str, str]]) -> None:
        """Unresolved before any lookup when a setting the references need is missing (the webhook URL)."""
        if ("block", APPROVAL_BLOCK) in refs and not self.webhook_url:
            raise Unresolved(f"{WEBHOOK_ENV} is not set (the webhook of the approval notifications)")

    def __call__(self, kind: str, name: str) -> str:
        """The id of the `kind` ("block"/"deployment") named `name`; Unresolved when there is none."""
        key = f"{kind}:{name}"
        if key not in self.found:
            self.found[key] = self._block(name) if kind == "block" else self._deployment(name)
        return self.found[key]

    def _deployment(self, name: str) -> str:
        from prefect.exceptions import ObjectNotFound

        try:
            return str(self.client.read_deployment_by_name(name).id)
        except ObjectNotFound:
            raise Unresolved(f"deployment '{name}' not found (deploy prefect.yaml first)") from None

    def _block(self, name: str) -> str:
        from prefect.exceptions import ObjectNotFound

        if name == APPROVAL_BLOCK:
            if not self.webhook_url:
                raise Unresolved(f"{WEBHOOK_ENV} is not set (the webhook of the approval notifications)")
            block_id, self.approval_block = ensure_approval_block(self.webhook_url)
            return block_id
        slug, _, block_name = name.partition("/")
        try:
            return str(self.client.read_block_document_by_name(block_name, block_type_slug=slug).id)
        except ObjectNotFound:
            raise Unresolved(f"block '{name}' not found") from None


def approval_block(url: str):
    """The notification block of the approval automations: a JSON POST to `url` (kept as a secret value)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.types import SecretDict

    return CustomWebhookNotificationBlock(
        name=APPROVAL_BLOCK.split("/")[1],
        url="{{webhook_url}}",
        method="POST",
        json_data={"text": "{{subject}}\n{{body}}", "subject": "{{subject}}", "body": "{{body}}"},
        secrets=SecretDict({"webhook_url": url}),
    )


def ensure_approval_block(url: str) -> tuple[str, str]:
    """Create or update the approval notification block to POST to `url`: (its id, created/updated/unchanged)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    name = APPROVAL_BLOCK.split("/")[1]
    wanted = approval_block(url)
    try:
        existing: Any = CustomWebhookNotificationBlock.load(name, validate=False)
    except ValueError:  # Prefect: "Unable to find block document named …"
        existing = None
    if existing is not None and _block_values(existing) == _block_values(wanted):
        return str(existing._block_document_id), "unchanged"
    block_id = wanted.save(name, overwrite=True)
    return str(block_id), "created" if existing is None else "updated"


def _block_values(block) -> dict:
    data = block.model_dump(exclude={"secrets"})
    return {**data, "secrets": block.secrets.get_secret_value()}


def _resolve(value: Any, resolver: Resolver) -> Any:
    """`value` (a file's parsed YAML) with every `$block:`/`$deployment:` string replaced by the object's id."""
    if isinstance(value, dict):
        return {k: _resolve(v, resolver) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, resolver) for v in value]
    if isinstance(value, str) and (m := _REFERENCE.match(value)):
        return resolver(m.group(1), m.group(2))
    return value


def _references(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [r for v in value.values() for r in _references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    if isinstance(value, str) and (m := _REFERENCE.match(value)):
        return [(m.group(1), m.group(2))]
    return []


def references(path: Path) -> list[tuple[str, str]]:
    """The (kind, name) references of a file, e.g. ("deployment", "promotion-expiry/promotion-expiry")."""
    return _references(yaml.safe_load(Path(path).read_text()))


def load(path: Path, within: float | None = None, resolver: Resolver | None = None) -> AutomationCore:
    """The automation in `path`, its event trigger's window replaced by `within` seconds when given; its
    references resolved by `resolver` (needed when the file has any: Unresolved when one does not resolve).
    """
    data = yaml.safe_load(Path(path).read_text())
    if refs := _references(data):
        if resolver is None:
            raise Unresolved(f"{path}: its references need the server (flows.automations.apply resolves them)")
        if isinstance(resolver, Resolver):
            resolver.precheck(refs)
        data = _resolve(data, resolver)
    automation = AutomationCore.model_validate(data)
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


@dataclass
class Applied:
    """What applying the files did: {name: created/updated/unchanged}, {name: why not applied}, and what
    happened to the approval notification block (None when no applied file uses it).
    """

    automations: dict[str, str]
    skipped: dict[str, str]
    approval_block: str | None


def apply_files(
    paths: list[Path] | None = None, within: float | None = None, webhook_url: str | None = None
) -> Applied:
    """Apply every automation file (default: all of infra/prefect/automations) whose references resolve.

    A file whose references do not resolve (no MLOPS_APPROVAL_WEBHOOK_URL for the approval block, a deployment
    not deployed yet) is not applied; `skipped` says why. `webhook_url`: default $MLOPS_APPROVAL_WEBHOOK_URL.
    """
    files = paths or sorted(AUTOMATIONS_DIR.glob("*.yaml"))
    done: dict[str, str] = {}
    skipped: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        resolver = Resolver(client, webhook_url or os.environ.get(WEBHOOK_ENV) or None)
        for path in files:
            try:
                automation = load(path, within, resolver)
            except Unresolved as why:
                skipped[yaml.safe_load(Path(path).read_text()).get("name", str(path))] = str(why)
                continue
            done[automation.name] = apply_one(automation)
    return Applied(done, skipped, resolver.approval_block)


def apply(
    paths: list[Path] | None = None, within: float | None = None, webhook_url: str | None = None
) -> dict[str, str]:
    """apply_files(…).automations: {name: created/updated/unchanged} of the files that were applied."""
    return apply_files(paths, within, webhook_url).automations


def main(argv: list[str] | None = None) -> int:
    """CLI: apply the files and print one line per automation (and one per automation not applied, saying why)."""
    summary = (__doc__ or "Apply the shipped Prefect automations.").splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m flows.automations", description=summary)
    parser.add_argument("files", nargs="*", type=Path, help="automation YAML files (default: all shipped ones)")
    parser.add_argument("--within", type=float, default=None, help="override the trigger window (seconds)")
    args = parser.parse_args(argv)
    result = apply_files(args.files or None, args.within)
    for name, outcome in result.automations.items():
        print(f"Prefect automation '{name}': {outcome}")
    if result.approval_block is not None:
        print(f"Prefect notification block '{APPROVAL_BLOCK}': {result.approval_block} (webhook: ${WEBHOOK_ENV})")
    for name, why in result.skipped.items():
        print(f"Prefect automation '{name}': NOT applied — {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
