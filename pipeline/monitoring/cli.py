"""`mlops label`: labels join captured traffic later (pipeline/monitoring/labels.py).

`--post` sends them to the monitor's inbox instead; the S3 uploader is injected by pipeline.cli (`use_uploader`),
since this layer does not import pipeline.delivery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.command import DEFAULT_PARAMS, ParamsOpt, call, fail, load

_uploader = None  # set by pipeline.cli: (params, s3 URI, file) -> the URL written


def use_uploader(upload) -> None:
    """Inject how `--post` puts a file into an S3 inbox."""
    global _uploader
    _uploader = upload


def label_command(
    request_id: Annotated[
        str | None, typer.Argument(metavar="REQUEST_ID", help="A captured image's request id.")
    ] = None,
    value: Annotated[str | None, typer.Argument(metavar="LABEL", help="Its class index or class name.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="CSV with columns request_id,label (or JSON {request_id: label}).")
    ] = None,
    post: Annotated[
        bool,
        typer.Option(
            "--post",
            help="Send the labels to the monitor's inbox (<monitor.inbox>/labels/, else <paths.incoming>/labels/) "
            "instead of applying them here: the next monitor run joins them (the way with deployments).",
        ),
    ] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Attach labels to captured images waiting in monitor.captured; they become an accepted batch (next training
    data version). All or nothing: unknown request ids or labels are named and nothing is applied.
    """
    from pipeline.core import io
    from pipeline.monitoring import labels
    from pipeline.monitoring.state import MonitorState

    if (request_id is None) != (value is None) or (file is None and request_id is None):
        fail("give --file labels.csv and/or REQUEST_ID LABEL")
    cfg = load(params)
    pairs = call(labels.read_label_file, file) if file is not None else []
    if request_id is not None and value is not None:
        pairs.append((request_id, value))
    manifest = Path(cfg.paths.ingested) / "manifest.json"
    if post:
        names = call(io.read_json, manifest)["class_names"] if manifest.is_file() else None
        typer.echo(f"posted {len(pairs)} label(s) to {call(labels.post_labels, cfg, pairs, names, _uploader)}")
        return
    class_names = call(io.read_json, manifest)["class_names"]
    state = call(MonitorState.load, cfg.paths.monitor_state)
    result = call(labels.apply_labels, cfg, pairs, class_names, state, str(file or "command line"))
    typer.echo(
        f"labelled {result['labelled']} captured image(s) -> {result['accepted']} "
        f"({result['new_labels']} of monitor.min_new_labels={cfg.monitor.min_new_labels} since the last retrain)"
    )
