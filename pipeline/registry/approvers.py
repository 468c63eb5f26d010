"""Who may approve: promotion decisions under MLflow's basic-auth users (`mlflow server --app-name basic-auth`).

With auth on (the tracking server answers 401 to an anonymous request), a decision is applied with the approver's
own MLflow credentials — MLflow's MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials) —
and the name recorded is the user the server authenticated, never a typed one. Deciding needs MLflow permission
MANAGE on the registered model: setting an alias needs EDIT, but approve and reject delete the `challenger` alias,
which MLflow allows only with MANAGE (verified on a basic-auth server; tests/integration/test_approver_auth.py).
The approver also writes the audit record, so needs EDIT on the model's audit experiment `<model>-audit`
(grant() gives both). With auth off (embedded store, or a server without the auth app) nothing changes: the
approver is the `--by` name.

A refused decision changes nothing and is audited (action "refused": who, what they tried, why refused). The
refused user cannot write to MLflow, so the refusal is written with the pipeline's service identity:
MLOPS_SERVICE_MLFLOW_USERNAME / MLOPS_SERVICE_MLFLOW_PASSWORD from the environment (the compose/k8s secrets and
`infra/local/stack.sh env` provide them; never in git, never printed). The service user is an MLflow admin:
check_approver() — the Prefect UI path, where the worker applies the decision with the service identity and the
approver is a typed name — asks MLflow, with the service's credentials, whether that name is a user with MANAGE.

MLflow reads the credentials from the environment at each request, so service_identity() swaps them in
os.environ for the duration of a block: not for concurrent use by several threads of one process.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

from pipeline.core import clock
from pipeline.core.errors import StageError
from pipeline.registry import audit, store
from pipeline.registry.aliases import ALL as ALIASES

T = TypeVar("T")

USER_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")  # MLflow's own: the approver's credentials
SERVICE_ENV = ("MLOPS_SERVICE_MLFLOW_USERNAME", "MLOPS_SERVICE_MLFLOW_PASSWORD")  # the pipeline's (an admin)
REQUIRED = "MANAGE"  # on the registered model: deleting an alias (approve, reject) needs it
AUDIT_REQUIRED = "EDIT"  # on the audit experiment: the approver appends the decision's record
REFUSED = "refused"
_CURRENT_USER = "/api/2.0/mlflow/users/current"
_USER_PERMISSION = "/api/3.0/mlflow/users/permissions/get"
_RANK = {"NO_PERMISSIONS": 0, "READ": 1, "USE": 2, "EDIT": 3, "MANAGE": 4}
_auth_on: dict[str, bool] = {}  # tracking URI -> the server runs the basic-auth app (asked once per process)


class ApproverRefused(StageError):
    """The decision was refused — the approver lacks the permission, or `--by` is not the authenticated user —
    nothing was changed, and the refusal was audited (when the service identity is available).
    """


def _http(uri: str, endpoint: str, params: dict | None = None, creds: tuple[str, str] | None = None):
    """GET `endpoint` of the server at `uri` with `creds` (None: anonymous), TLS settings as MLflow's own."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    base = get_default_host_creds(uri)
    host = MlflowHostCreds(
        uri,
        username=creds[0] if creds else None,
        password=creds[1] if creds else None,
        ignore_tls_verification=base.ignore_tls_verification,
        client_cert_path=base.client_cert_path,
        server_cert_path=base.server_cert_path,
    )
    return http_request(host, endpoint, "GET", params=params, max_retries=2, backoff_factor=1, timeout=30)


def auth_enabled() -> bool:
    """The tracking server runs MLflow's basic-auth app (an anonymous request is answered 401); False for the
    embedded store and for a server without it.
    """
    uri = store.tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return False
    if uri not in _auth_on:
        with store.reachable("who may approve"):
            _auth_on[uri] = _http(uri, _CURRENT_USER).status_code == 401
    return _auth_on[uri]


def _user_credentials() -> tuple[str, str] | None:
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    return (creds.username, creds.password) if creds.username and creds.password else None


def service_credentials() -> tuple[str, str]:
    """The pipeline's service identity (MLOPS_SERVICE_MLFLOW_USERNAME / _PASSWORD), or StageError."""
    user, password = (os.environ.get(name, "") for name in SERVICE_ENV)
    if not user or not password:
        raise StageError(
            f"no service identity: set {SERVICE_ENV[0]} and {SERVICE_ENV[1]} (the pipeline's MLflow admin user; "
            "`source <(infra/local/stack.sh env)` does for the local stack)"
        )
    return user, password


@contextlib.contextmanager
def service_identity() -> Iterator[str]:
    """Within the block, MLflow calls of this process use the service's credentials; the user name is yielded."""
    user, password = service_credentials()
    saved = {name: os.environ.get(name) for name in USER_ENV}
    os.environ.update(dict(zip(USER_ENV, (user, password), strict=True)))
    try:
        yield user
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def identity() -> str | None:
    """The MLflow user the configured credentials authenticate as (the server confirms them); None when auth is off.

    StageError when the server requires a login and none is configured, or rejects the credentials.
    """
    if not auth_enabled():
        return None
    uri = store.tracking_uri()
    creds = _user_credentials()
    if creds is None:
        raise StageError(
            f"the MLflow server at {uri} requires a login: set {USER_ENV[0]} and {USER_ENV[1]} to your own MLflow "
            "user; nothing was changed"
        )
    with store.reachable("who may approve"):
        response = _http(uri, _CURRENT_USER, creds=creds)
    if response.status_code == 401:
        raise StageError(f"the MLflow server at {uri} rejected the credentials of user '{creds[0]}' ({USER_ENV[0]})")
    if response.status_code != 200:
        raise StageError(f"the MLflow server at {uri} answered {response.status_code} to {_CURRENT_USER}")
    return str(response.json()["user"]["username"])


def _permission(uri: str, user: str, resource_type: str, resource_id: str, creds) -> str | None:
    """`user`'s effective permission on the resource, asked with `creds`; None when MLflow has no such user."""
    params = {"username": user, "resource_type": resource_type, "resource_id": resource_id}
    with store.reachable("who may approve"):
        response = _http(uri, _USER_PERMISSION, params, creds)
    if response.status_code == 200:
        return str(response.json()["permission"])
    if response.status_code == 404 or "RESOURCE_DOES_NOT_EXIST" in response.text:
        return None
    if response.status_code == 403:
        raise StageError(f"MLflow did not let '{creds[0]}' read the permissions of '{user}' (needs an admin)")
    raise StageError(f"MLflow answered {response.status_code} to a permission check: {response.text[:200]}")


def require_permission(model: str, user: str, creds: tuple[str, str] | None = None, *, audit_too: bool = True) -> str:
    """`user`'s permission on registered model `model` when it is MANAGE (an admin's too), else ApproverRefused.

    `creds`: whose credentials ask (default: the configured user's own; a user may ask about themselves, an admin
    about anyone). `audit_too`: the user must also be able to append to the model's audit experiment (EDIT) —
    they write the decision's audit record when they decide with their own credentials.
    """
    uri = store.tracking_uri()
    creds = creds or _user_credentials()
    if creds is None:
        raise StageError(f"no MLflow credentials to check '{user}''s permission with ({USER_ENV[0]})")
    permission = _permission(uri, user, "registered_model", model, creds)
    if permission is None:
        raise ApproverRefused(f"'{user}' is not an MLflow user; only users with {REQUIRED} on {model} may decide")
    if _RANK.get(permission, 0) < _RANK[REQUIRED]:
        raise ApproverRefused(
            f"'{user}' may not decide on {model}: MLflow permission {permission} on the registered model, a "
            f"decision needs {REQUIRED} (an MLflow admin grants it: `python -m pipeline.registry.approvers grant "
            f"{model} {user}`); nothing was changed"
        )
    if audit_too:
        experiment = store.client().get_experiment_by_name(audit.experiment(model))
        if experiment is not None:  # else the approver creates it (and owns it)
            on_audit = _permission(uri, user, "experiment", experiment.experiment_id, creds) or "NO_PERMISSIONS"
            if _RANK.get(on_audit, 0) < _RANK[AUDIT_REQUIRED]:
                raise ApproverRefused(
                    f"'{user}' may not decide on {model}: permission {on_audit} on its audit experiment "
                    f"{audit.experiment(model)}, recording a decision needs {AUDIT_REQUIRED} (an MLflow admin grants "
                    f"it: `python -m pipeline.registry.approvers grant {model} {user}`); nothing was changed"
                )
    return permission


def _aliases(model: str) -> dict[str, str | None]:
    """The versions the aliases name now (what a refused decision was about); {} when they cannot be read."""
    try:
        return {a: (str(v.version) if (v := store.version_by_alias(model, a)) else None) for a in ALIASES}
    except Exception:  # noqa: BLE001 - what was tried is recorded even when the registry cannot be read
        return {}


def audit_refusal(model: str, user: str, action: str, why: str, reason: str = "") -> dict:
    """Append a "refused" record to `model`'s audit trail, written with the service identity: who (`user`), what
    they tried (`action` on the versions the aliases name now), why it was refused, and the reason they gave.

    No version is tagged (versions: {}): a refusal changes nothing in the registry, only the audit experiment.
    """
    tried = {"action": action, "aliases": _aliases(model), "reason": reason}
    record = {
        "id": uuid.uuid4().hex,
        "action": REFUSED,
        "by": user,
        "at": clock.utc_iso(),
        "reason": f"tried to {action}: {why}",
        "versions": {},
        "diff": {},
        "tried": tried,
    }
    with service_identity(), store.reachable("recording the refusal"):
        audit.append(store.client(), model, record)
    return record


def _refuse(model: str, user: str, action: str, why: str, reason: str) -> ApproverRefused:
    """ApproverRefused(`why`), after auditing it; says so when the audit itself could not be written."""
    try:
        audit_refusal(model, user, action, why, reason)
    except StageError as exc:
        return ApproverRefused(f"{why} (the refusal could not be audited: {exc})")
    return ApproverRefused(f"{why} (refusal audited)")


def decider(model: str, by: str | None, action: str, reason: str = "") -> str:
    """The name to record for a decision `action` ("approve", "reject", "rollback") on `model`.

    Auth off: `by` as given (promotion refuses an empty one). Auth on: the authenticated user — refused (and
    audited) when `by` names someone else or the user lacks MANAGE on the model / EDIT on its audit experiment.
    """
    user = identity()
    if user is None:
        return by or ""
    if by and by.strip() and by.strip() != user:
        raise _refuse(model, user, action, f"--by '{by}' is not the authenticated MLflow user '{user}'", reason)
    try:
        require_permission(model, user)
    except ApproverRefused as exc:
        raise _refuse(model, user, action, str(exc), reason) from None
    return user


def apply(model: str, user: str, action: str, reason: str, fn: Callable[..., T], *args: object) -> T:
    """fn(*args), turning MLflow's own refusal (403 PERMISSION_DENIED: a permission revoked since the check) into
    an audited ApproverRefused. The promotion steps are crash-safe: a rerun completes what was interrupted.
    """
    from mlflow.exceptions import MlflowException

    try:
        return fn(*args)
    except MlflowException as exc:
        if exc.error_code != "PERMISSION_DENIED" or not auth_enabled():
            raise
        why = f"MLflow refused '{user}' a step of the {action} ({str(exc)[:200]})"
        raise _refuse(model, user, action, why, reason) from None


def check_approver(model_name: str, name: str) -> None:
    """For a decision the worker applies with the service identity (the Prefect UI form): `name` must be an MLflow
    user with MANAGE on `model_name`, checked with the service's (admin) credentials. No-op when auth is off.

    Raises ApproverRefused (a StageError; the refusal audited) when `name` is no such user, StageError when the
    service identity is missing or may not read permissions (nothing audited then).
    """
    if not auth_enabled():
        return
    creds = service_credentials()
    user = (name or "").strip()
    if not user:
        raise StageError("a decision needs the approver's MLflow user name; nothing was changed")
    try:
        require_permission(model_name, user, creds, audit_too=False)
    except ApproverRefused as exc:
        raise _refuse(model_name, user, "decide (Prefect form)", str(exc), "") from None


def grant(model: str, user: str) -> None:
    """Make `user` an approver of `model` (run as an MLflow admin — the service identity when set): MANAGE on the
    registered model, EDIT on its audit experiment (created when missing).
    """
    from mlflow.server.auth.client import AuthServiceClient

    context = service_identity() if all(os.environ.get(n) for n in SERVICE_ENV) else contextlib.nullcontext()
    with context:
        experiment_id = store.ensure_experiment(audit.experiment(model))
        client = AuthServiceClient(store.tracking_uri())
        client.grant_user_permission(user, "registered_model", model, REQUIRED)
        client.grant_user_permission(user, "experiment", experiment_id, AUDIT_REQUIRED)


if __name__ == "__main__":  # pragma: no cover - admin helper: python -m pipeline.registry.approvers grant MODEL USER
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "grant":
        sys.exit("usage: python -m pipeline.registry.approvers grant MODEL USER")
    grant(sys.argv[2], sys.argv[3])
    print(f"{sys.argv[3]} may now decide on {sys.argv[2]} ({REQUIRED} on the model, {AUDIT_REQUIRED} on its audit)")
