"""Registering is idempotent: a rerun after a crash reuses (and completes) the version of the same lineage key.

A model version is created — with every tag, `lineage.key` and `source_run_id` included, in one call — only after
all of its run's artifacts were logged. A process killed after that call leaves a complete version whose run is
still RUNNING and has no `registered_version` tag: the rerun finds the version by its lineage key, checks that its
files are all there, and completes the rest. A version that exists but is not complete (not READY, files missing
or not matching the registered sha256) is never reused or aliased: it is deleted and registered anew.
"""

from __future__ import annotations

import logging
import os

from pipeline.core import clock
from pipeline.registry import describe, lineage, runs, store

SOURCE_RUN_TAG = "source_run_id"
REGISTERED_TAG = "registered_version"  # run tag: the version its model became
COMPLETED_TAG = "mlops.completed_by"  # run tag: a later process completed what the run's own process could not

log = logging.getLogger(__name__)


def reusable_version(model_name: str, key: str | None):
    """The newest complete version registered with lineage key `key` (None: register one); incomplete ones with
    that key are deleted, so nothing can ever alias them.
    """
    if not key:
        return None
    for mv in lineage.find_by_key(model_name, key):
        reason = lineage.missing_files(model_name, mv)
        if reason is None:
            return mv
        log.warning("%s v%s (lineage key %s) is incomplete (%s): deleting it", model_name, mv.version, key, reason)
        store.client().delete_model_version(model_name, mv.version)
    return None


def drop_retried_copies(model_name: str, key: str | None, run_id: str, version: str) -> str:
    """The one version run `run_id` registered under lineage key `key`; copies are deleted, and the one kept gets
    its description (pipeline.registry.describe). Without a key (no dvc.lock) nothing is looked up or written.

    MLflow's HTTP client retries every method, POST included: a create-version request whose response was lost
    (a proxy's 502, a read timeout, a restarted worker) is sent again and the server creates a second version.
    """
    if not key:
        return version
    mine = sorted((mv for mv in lineage.find_by_key(model_name, key) if mv.run_id == run_id), key=_number)
    for copy in mine[1:]:
        log.warning("%s v%s duplicates v%s (a retried request): deleting it", model_name, copy.version, mine[0].version)
        store.client().delete_model_version(model_name, copy.version)
    kept = str(mine[0].version) if mine else version
    describe.describe_version(store.client(), model_name, kept)
    return kept


def _number(mv) -> int:
    return int(mv.version)


def complete(model_name: str, mv) -> dict:
    """Add what an interrupted registration of `mv` left out; the source run as {"run_id", "experiment_id"}.

    The version gets its `source_run_id` tag, the run its `registered_version` tag; a run left RUNNING by a process
    that is gone (or marked FAILED for it) is FINISHED: everything it logs precedes the version's creation.
    """
    client = store.client()
    run_id = mv.run_id or (mv.tags or {}).get(SOURCE_RUN_TAG)
    if not run_id:
        return {"run_id": None, "experiment_id": None}
    if (mv.tags or {}).get(SOURCE_RUN_TAG) != run_id:
        client.set_model_version_tag(model_name, mv.version, SOURCE_RUN_TAG, run_id)
    run = client.get_run(run_id)
    if run.data.tags.get(REGISTERED_TAG) != str(mv.version):
        client.set_tag(run_id, REGISTERED_TAG, str(mv.version))
    failed_for_dying = run.info.status == "FAILED" and runs.FAILED_TAG in run.data.tags
    if runs.owner_gone(run) or failed_for_dying:
        note = f"{clock.utc_iso()}: v{mv.version} was registered complete; pid {os.getpid()} on {runs.host()}"
        client.set_tag(run_id, COMPLETED_TAG, note)
        if failed_for_dying:
            client.delete_tag(run_id, runs.FAILED_TAG)
        client.set_terminated(run_id, "FINISHED")
    return {"run_id": run_id, "experiment_id": run.info.experiment_id}


def reuse(model_name: str, key: str | None) -> dict | None:
    """The registration record of the complete version with lineage key `key` (completed first), or None."""
    mv = reusable_version(model_name, key)
    if mv is None:
        return None
    source = complete(model_name, mv)
    describe.describe_version(store.client(), model_name, mv.version)  # a rerun completes the description too
    return {
        "model_name": model_name,
        "version": int(mv.version),
        "alias": None,
        "blessed": mv.tags.get("eval.blessed") == "true",
        "run_id": source["run_id"],
        "model_uri": f"models:/{model_name}/{mv.version}",
        "experiment_id": source["experiment_id"],
        "deploy_variant": mv.tags.get("model.deploy_variant"),
        "lineage_key": key,
        "sha256": mv.tags.get(lineage.SHA_TAG),
        "reused": True,
    }
