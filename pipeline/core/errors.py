"""User-facing errors: each message names the file/field at fault and how to fix it."""


class StageError(Exception):
    """An expected stage failure (bad data, failed checks, missing inputs); the CLI exits 2 with the message."""


class DatasetError(StageError, ValueError):
    """The input dataset is missing, corrupt or malformed."""
