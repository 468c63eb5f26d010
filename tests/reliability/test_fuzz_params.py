"""Fuzzed params.yaml: a bad value is refused with a ConfigError naming its field; a good value loads as written.

Hypothesis edits the project's own params.yaml one field at a time (the fields are read from the pydantic models in
pipeline/core/config.py, so new ones are fuzzed too) and loads it through the real path (`load_params`, which
`pipeline.core.command.load` and so every `mlops` command and stage use; one test goes through `mlops status`):

* invalid values — wrong types (text, lists, maps, dates, null), out of range (from each field's own bounds), YAML's
  booleans (yes/no/on/off) and .inf/.nan where numbers belong, unknown keys at any level, sections replaced by
  scalars — must raise ConfigError naming `section.field` (never another exception);
* valid values — drawn from each field's type and bounds, with whole sections left out — must load, unchanged;
* YAML oddities anywhere (tags, anchors, merge keys, sexagesimal and hex numbers, impossible dates, 5,000-digit
  integers, 3,000-deep nesting, python/object tags) must load as YAML reads them or be refused naming the field or
  the line; a python/object tag never runs;
* random bytes anywhere in the file (not UTF-8, control characters) must load or raise ConfigError.

Example counts come from the Hypothesis profile (tests/conftest.py: "ci" fixed-seed, "dev", "fuzz" for `make fuzz`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings, strategies as st

from pipeline.core.config import ConfigError, Params, load_params
from tests.helpers_s3 import ROOT
from tests.reliability.common import cli
from tests.reliability.fuzz_values import TEXT, as_yaml, invalid_values, leaves, parts, valid_values

TRIPPED: list[str] = []
SENTINEL = "__FUZZED_VALUE__"

# looks like an AWS access key id; built at run time so the git index never holds one (test_security checks it)
SECRET_LIKE = "AKIA" + "IOSFODNN7EXAMPLE"


def _tripped() -> None:  # what a YAML python/object/apply tag naming it would run
    TRIPPED.append("tripped")


LEAVES = leaves(Params)
LEAF = {key: (key, field, model) for key, field, model in LEAVES}
SECTIONS = sorted({key[:-1] for key, _, _ in LEAVES if len(key) > 1})
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


# ------------------------------------------------------------------------------------------------ writing, loading


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-params") / "params.yaml"


def write_with(path: Path, key: tuple[str, ...], raw: str, base: dict | None = None) -> int:
    """Write `base` (the project's params.yaml) with `key` set to the YAML text `raw`; the line it is on."""
    doc = yaml.safe_load(yaml.safe_dump(BASE if base is None else base))  # a deep copy
    node = doc
    for part in key[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[key[-1]] = SENTINEL
    text = yaml.safe_dump(doc, sort_keys=False, width=10**6)
    path.write_text(text.replace(SENTINEL, raw))
    return next(i for i, line in enumerate(text.splitlines(), 1) if SENTINEL in line)


def refused_naming(path: Path, key: tuple[str, ...], line: int | None = None) -> str:
    """Load `path`; assert ConfigError naming `key` (or its line); its message."""
    with pytest.raises(ConfigError) as caught:  # any other exception fails the test with its traceback
        load_params(path)
    message = str(caught.value)
    named = _names(message, key) or (line is not None and f"line {line}" in message)
    assert named, f"the message does not name {'.'.join(key)} (line {line}):\n{message}"
    return message


def _names(message: str, key: tuple[str, ...]) -> bool:
    """True when one of the message's lines is about `key` (or an element of it: `validate.pixel_mean_range.1`)."""
    dotted = ".".join(key)
    return f"- {dotted}:" in message or f"- {dotted}." in message


def value_at(params: Params, key: tuple[str, ...]):
    node: object = params
    for part in key:
        node = getattr(node, {"validate": "validate_", "register": "register_"}.get(part, part))
    return node


# ------------------------------------------------------------------------------------------------ the properties


@st.composite
def bad_edits(draw) -> tuple[tuple[str, ...], str]:
    """(key, raw YAML): an invalid value, an unknown key, or a section replaced by a scalar."""
    kind = draw(st.sampled_from(["value", "value", "value", "unknown", "section"]))
    if kind == "value":
        key, field, model = draw(st.sampled_from(LEAVES))
        return key, draw(invalid_values(key, field, model))
    if kind == "section":
        return draw(st.sampled_from(SECTIONS)), draw(st.sampled_from(["5", "[1, 2]", "fast", "true", "~"]))
    where = draw(st.sampled_from([(), *SECTIONS]))
    known = {k[len(where)] for k, _, _ in LEAVES if k[: len(where)] == where}
    name = draw(st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True).filter(lambda n: n not in known))
    return (*where, name), draw(st.sampled_from(["1", "x", "[1]", "{a: 1}", "~", SECRET_LIKE]))


@example(edit=(("train", "epochs"), "yes"))  # found: loaded as 1 epoch
@example(edit=(("train", "learning_rate"), ".inf"))  # found: loaded as inf
@example(edit=(("validate", "pixel_mean_range"), "[.nan, 1.0]"))  # found: loaded
@example(edit=(("ingest", "channels"), "true"))  # found: loaded as 1 channel
@given(edit=bad_edits())
def test_an_invalid_value_is_refused_naming_its_field(params_file, edit):
    key, raw = edit
    line = write_with(params_file, key, raw)
    message = refused_naming(params_file, key, line)
    assert SECRET_LIKE not in message, "the value of an unknown key was echoed"
    assert len(message) < 2000, message


@st.composite
def good_edits(draw) -> tuple[tuple[str, ...], object, dict]:
    """(key, value, base): a valid value for one field, in params.yaml with some sections left out."""
    key, field, model = draw(st.sampled_from(LEAVES))
    dropped = draw(st.sets(st.sampled_from([k for k in BASE if k != key[0]])))
    return key, draw(valid_values(key, field, model)), {k: v for k, v in BASE.items() if k not in dropped}


@given(edit=good_edits())
def test_a_valid_value_loads_as_written(params_file, edit):
    key, value, base = edit
    write_with(params_file, key, as_yaml(value), base)
    loaded = value_at(load_params(params_file), key)
    assert loaded == (tuple(value) if isinstance(value, list) else value), (key, value, loaded)


ODDITIES = ["yes", "no", "on", "off", "y", "n", "~", "Null", ".inf", "-.inf", ".nan", "0x1F", "0o17", "017", "1_000",
            "1:30", "+12", ".5", "1.", "1e3", "1.0e+3", "2024-01-01", "2024-13-45", "2001-12-14t21:59:43.10-05:00",
            "'12'", "!!str 12", "!!int '12'", "!!float 1", "!!binary aGVsbG8=", "!!binary ###", "!!set {a, b}",
            "!!omap [a: 1]", "&x 5", "*undefined", "{a: [1, {b: 2}]}", "1" * 5000, "-" + "9" * 4301, "1e400",
            '"\\ud800"', "é", "|", "%", "@x", "`x`", "[" * 3000 + "]" * 3000, "{a: " * 3000 + "1" + "}" * 3000,
            f"!!python/object/apply:{__name__}._tripped []", "!!python/name:os.system", "{<<: {a: 1}}"]


@example(key_field=LEAF[("seed",)], raw="1" * 5000)  # found: ValueError traceback (int digit limit)
@example(key_field=LEAF[("train", "epochs")], raw="2024-13-45")  # found: ValueError traceback (no such date)
@example(key_field=LEAF[("seed",)], raw="[" * 3000 + "]" * 3000)  # found: RecursionError traceback
@given(key_field=st.sampled_from(LEAVES), raw=st.sampled_from(ODDITIES) | st.text(TEXT, max_size=12).map(as_yaml))
def test_yaml_oddities_load_as_yaml_reads_them_or_are_refused_naming_the_field_or_line(params_file, key_field, raw):
    key, field, _ = key_field
    line = write_with(params_file, key, raw)
    try:
        params = load_params(params_file)
    except ConfigError:
        refused_naming(params_file, key, line)
    else:
        meant = yaml.safe_load(f"v: {raw}")["v"]
        loaded = value_at(params, key)
        kind, _ = parts(field.annotation)
        assert not isinstance(meant, bool) or kind is bool or kind is str, (key, raw, loaded)
        assert loaded == meant or _coerced(meant, loaded), (key, raw, meant, loaded)
    assert not TRIPPED, "a YAML python/object tag ran"


@example(at=6, junk=b"\xff")  # found: UnicodeDecodeError traceback
@given(at=st.integers(0, 10**6), junk=st.binary(min_size=1, max_size=8))
def test_random_bytes_in_the_file_load_or_are_refused_with_a_config_error(params_file, at, junk):
    text = yaml.safe_dump(BASE, sort_keys=False).encode()
    at %= len(text)
    params_file.write_bytes(text[:at] + junk + text[at:])
    try:
        load_params(params_file)
    except ConfigError as exc:  # any other exception fails the test
        assert str(exc).startswith(str(params_file)), exc


def test_a_rule_across_fields_is_reported_by_its_own_message(params_file):
    ingest = {**BASE.get("ingest", {}), "val_fraction": 0.45}
    write_with(params_file, ("ingest", "stream_fraction"), "0.45", {**BASE, "ingest": ingest})
    with pytest.raises(ConfigError) as caught:
        load_params(params_file)
    message = str(caught.value)
    assert "\n  - ingest.val_fraction + ingest.stream_fraction must leave at least 20% for training" in message
    assert "Value error" not in message and "- :" not in message, message  # found: "  - : Value error, ..."


def _coerced(meant, loaded) -> bool:
    """pydantic's lax conversions of what YAML read: "12" → 12, 3 → 3.0, [1, 2] → (1, 2), b"x" → "x", "yes" → True."""
    if isinstance(meant, list):
        return tuple(meant) == loaded
    if isinstance(meant, bytes):
        return meant.decode() == loaded
    if isinstance(meant, str) and isinstance(loaded, bool):
        return meant.lower() in ("y", "n", "yes", "no", "on", "off", "true", "false", "t", "f", "1", "0")
    if isinstance(meant, str | int | float) and isinstance(loaded, int | float):
        return float(meant) == loaded
    return False


@settings(max_examples=max(5, settings.default.max_examples // 10))
@given(edit=bad_edits())
def test_the_cli_exits_2_with_the_message_and_no_traceback(params_file, edit):
    key, raw = edit
    write_with(params_file, key, raw)
    code, output = cli("status", "--params", params_file)
    assert code == 2 and "Traceback" not in output, output
    assert _names(output, key), output
