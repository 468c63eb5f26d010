"""Reading params.yaml and saying what is wrong with it: every problem becomes a ConfigError naming where it is.

`read_mapping` turns the file into a dict or raises ConfigError for a missing, non-UTF-8 or unparsable file (YAML
errors carry the line and column, including values YAML cannot construct, such as the date 2024-13-45 or an
integer of 5,000 digits), for nesting too deep to read, and for a top level that is not a mapping. `describe` turns
a pydantic ValidationError into one line per bad field, named by its dotted path (`train.learning_rate`), with the
rule it broke and the value it got (shortened; never the value of an unknown key, which may be a misplaced secret).
`pipeline.core.config` validates with them.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.constructor import ConstructorError


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message says where and how to fix it."""


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader whose unconstructible values are YAML errors with their position, not bare ValueErrors."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """The value of `node`; ConstructorError (with the line) for a date or number that cannot exist."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # e.g. 2024-13-45, or past Python's 4,300-digit int limit
            raise ConstructorError(None, None, f"cannot read this value: {exc}", node.start_mark) from None


def read_mapping(path: Path) -> dict:
    """The mapping params.yaml holds (empty file: {}); ConfigError saying what is wrong otherwise."""
    if not path.is_file():
        raise ConfigError(f"{path}: not found. Run from the project root or pass --params PATH.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    raw = _parse(path, text) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _parse(path: Path, text: str) -> object:
    """The YAML document in `text`; ConfigError with the line for anything PyYAML cannot read."""
    try:
        loader = _SafeLoader(text)  # refuses control characters here
        try:
            return loader.get_single_data()
        except RecursionError:  # PyYAML composes recursively: [[[[...]]]] thousands deep
            raise ConfigError(
                f"{path}: line {loader.line + 1} nests too deeply to read; params.yaml holds sections of settings, "
                "a value is at most a short list"
            ) from None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlong, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxlevel = 40, 6, 6, 4, 3


def describe(path: Path, exc: ValidationError, model: type[BaseModel]) -> str:
    """One line per invalid parameter of `exc` (raised validating `model` from the file at `path`)."""
    lines = [f"{path}: {exc.error_count()} invalid parameter(s):"]
    lines += [f"  - {_line(err, model)}" for err in exc.errors()]
    return "\n".join(lines)


def _line(err: ErrorDetails, model: type[BaseModel]) -> str:
    """`dotted.path: what is wrong (got value)` for one pydantic error."""
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":  # never echo the value: a misplaced credential must not be printed
        known = known_keys(model, err["loc"][:-1])
        hint = f"; valid keys here: {', '.join(known)}" if known else ""
        return f"{where}: unknown parameter (typo, or a setting that does not belong in params.yaml){hint}"
    cause = err.get("ctx", {}).get("error")
    message = str(cause) if err["type"] == "value_error" and cause is not None else err["msg"]
    if not where:  # a rule across several fields (a model validator): its message names them
        return message
    return f"{where}: {message} (got {_SHORT.repr(err.get('input'))})"


def known_keys(model: type[BaseModel], section: tuple) -> list[str]:
    """The keys `model` accepts at `section` (a path of keys from the top), [] if it is not a section."""
    for key in section:
        fields = {f.alias or name: f.annotation for name, f in model.model_fields.items()}
        sub = fields.get(key)
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return []
        model = sub
    return [f.alias or name for name, f in model.model_fields.items()]
