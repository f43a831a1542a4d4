"""The one validation layer for every configuration of the package.

Both command lines (``useful-sim`` in sims/, ``useful-train`` in real/) describe their settings as
frozen dataclasses whose ``__post_init__`` checks each field with :func:`check`.  This module turns
such a dataclass into command-line flags (field names with dashes), reads the same fields from a TOML
file (``--config``), merges defaults < TOML < command line, and converts every value in one place so
that a bad value is reported the same way whatever its source:

    error: --alpha: got 1.5, expected a number in (0, 1]

It is plumbing, not one of the paper's objects: it lives under theory/ only because theory/ is the
one package both sims/ and real/ may import.

Errors are :class:`ConfigError` (a ``ValueError``) carrying the field name;
:func:`theory.plumbing.cli.cli_entry` turns them into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "ConfigError",
    "check",
    "check_choice",
    "check_allocation",
    "available_memory",
    "check_int",
    "check_number",
    "config_from_mapping",
    "load_toml",
    "add_config_arguments",
    "doc",
    "field_help",
    "check_within",
    "FLOAT32_MAX",
    "resolve_config",
    "config_file_values",
    "canonical_json",
    "config_digest",
    "canonical_numbers",
    "given_values",
    "to_jsonable",
]


class ConfigError(ValueError):
    """An invalid configuration value; ``field`` names it (``str(err)`` is one line)."""

    def __init__(self, field: str, value: Any = None, expected: str = "", *, message: str | None = None):
        self.field = field
        self.value = value
        self.expected = expected
        if message is None:
            message = f"{field}: got {value!r}, expected {expected}"
        super().__init__(message)


def check(condition: bool, field: str, value: Any, expected: str) -> None:
    """Raise :class:`ConfigError` for ``field`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(field, value, expected)


def _is_real(value: Any) -> bool:
    """int/float or a numpy real scalar, but not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_number(
    field: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Check that ``value`` is a finite real number in the interval given by ``low``/``high``.

    ``low_open``/``high_open`` make the corresponding end exclusive.  The error states the interval.
    """
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    left = "(" if (low is None or low_open) else "["
    right = ")" if (high is None or high_open) else "]"
    expected = f"a number in {left}{lo}, {hi}{right}"
    ok = _is_real(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    check(ok, field, value, expected)


def check_int(field: str, value: Any, *, low: int | None = None, high: int | None = None) -> None:
    """Check that ``value`` is an integer (not a bool) in ``[low, high]``."""
    lo = "-inf" if low is None else str(low)
    hi = "inf" if high is None else str(high)
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    check(ok, field, value, f"an integer in [{lo}, {hi}]")


def check_choice(field: str, value: Any, choices: Sequence[Any]) -> None:
    """Check that ``value`` is one of ``choices``."""
    check(value in tuple(choices), field, value, "one of " + ", ".join(repr(c) for c in choices))


def available_memory() -> int:
    """Bytes this process may still allocate: ``MemAvailable`` of /proc/meminfo (Linux), else the
    physical memory; lowered to the address-space limit (``ulimit -v``) when one is set."""
    import resource

    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
            avail = 1 << 62
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        avail = min(avail, soft)
    return int(avail)


def _human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_allocation(field: str, nbytes: float, what: str, *, limit: int | None = None) -> None:
    """Refuse, before allocating, a memory need above what the machine has.

    ``nbytes`` is the estimate (compute it in Python integers or floats, never by allocating);
    ``limit`` defaults to :func:`available_memory`.  The error names ``field`` (the flag whose value
    drives the size), what would be allocated and both sizes, e.g.
    ``--d: 1000000 needs about 7.5 TiB for the training patches; 20.1 GiB is available``.
    """
    limit = available_memory() if limit is None else int(limit)
    if not (nbytes <= limit):  # also catches NaN / inf estimates
        raise ConfigError(field, message=f"{field}: the configuration needs about {_human_bytes(float(nbytes))} "
                                         f"for {what}; {_human_bytes(limit)} is available")


# ----------------------------------------------------------------------------------------------
# Conversion of raw values (strings from the command line, TOML values) to a field's type.


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _coerce(field: str, raw: Any, annotation: Any) -> Any:
    """Convert ``raw`` to ``annotation``; strings come from the command line."""
    annotation, optional = _strip_optional(annotation)
    if optional and (raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", ""))):
        return None
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if isinstance(raw, str) and not all(isinstance(c, str) for c in choices):
            for c in choices:
                if str(c) == raw:
                    return c
        check_choice(field, raw, choices)
        return raw
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(field, raw, "true or false")
    if annotation is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise ConfigError(field, raw, "an integer")
    if annotation is float:
        if _is_real(raw):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw.strip())
            except ValueError:
                pass
        raise ConfigError(field, raw, "a number")
    if annotation is str:
        if isinstance(raw, str):
            return raw
        raise ConfigError(field, raw, "a string")
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(annotation)
        if isinstance(raw, str):
            items = [s for s in raw.split(",") if s.strip()]
        elif isinstance(raw, (list, tuple)):
            items = list(raw)
        else:
            raise ConfigError(field, raw, "a list (comma-separated on the command line)")
        return tuple(_coerce(field, item, item_type) for item in items)
    # Unions such as ``int | str`` (e.g. separate_epoch: int or "auto"): try each member.
    if origin in (typing.Union, types.UnionType):
        errors = []
        for member in typing.get_args(annotation):
            if member is type(None):
                continue
            try:
                return _coerce(field, raw, member)
            except ConfigError as err:
                errors.append(err.expected)
        raise ConfigError(field, raw, " or ".join(errors))
    return raw


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def config_from_mapping(cls: type, mapping: Mapping[str, Any], *, source: str = "configuration") -> Any:
    """Build ``cls`` from a mapping of field names (dashes or underscores) to raw values.

    Unknown keys raise :class:`ConfigError` naming the key, the source and the allowed keys.
    """
    types_ = _field_types(cls)
    names = _field_names(mapping, types_, source)
    return cls(**{name: _coerce(name.replace("_", "-"), mapping[key], types_[name]) for key, name in names.items()})


def _field_names(keys: Any, types_: Mapping[str, Any], source: str) -> dict[str, str]:
    """Each key's field name (dashes as underscores); an unknown key, or one field under two spellings
    (``batch-size`` and ``batch_size``, whose values would silently replace each other), is a ConfigError."""
    keys_of: dict[str, str] = {}  # field name -> the key that gave it
    for key in keys:
        name = key.replace("-", "_")
        if name not in types_:
            allowed = ", ".join(sorted(k.replace("_", "-") for k in types_))
            raise ConfigError(key, message=f"{source}: unknown key {key!r}; allowed keys: {allowed}")
        if name in keys_of:
            raise ConfigError(key, message=f"{source}: {keys_of[name]!r} and {key!r} are the same key; give it once")
        keys_of[name] = key
    return {key: name for name, key in keys_of.items()}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file is a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", str(path), "an existing TOML file")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:  # (not UTF-8: not TOML either)
        raise ConfigError("--config", message=f"--config: {path} is not valid TOML ({err})") from None


# ----------------------------------------------------------------------------------------------
# Command-line flags from the same fields.


FLOAT32_MAX = 3.4028234663852886e38  # "f32" in an interval: values that go into float32 tensors must fit
_INTERVAL = re.compile(r"([\[(])\s*([^,\s]+)\s*,\s*([^\s\])]+)\s*([\])])")


@dataclasses.dataclass(frozen=True)
class _Interval:
    low: float  # always finite
    high: float | None  # None: unbounded
    low_open: bool
    high_open: bool

    def text(self, integer: bool) -> str:
        """The interval as a flag's help states it: ``>= 1``, ``> 0``, ``in (0, 1]`` (a float32 cap unsaid)."""
        show = (lambda v: str(int(v))) if integer else (lambda v: f"{v:g}")
        if self.high is None or self.high == FLOAT32_MAX:
            return (">" if self.low_open else ">=") + " " + show(self.low)
        return f"in {'(' if self.low_open else '['}{show(self.low)}, {show(self.high)}{')' if self.high_open else ']'}"


def _interval(text: str) -> _Interval:
    m = _INTERVAL.fullmatch(text.strip())
    if m is None or m.group(2) in ("inf", "-inf"):
        raise ValueError(f"not an interval with a finite lower end such as [1, inf) or (0, 1]: {text!r}")
    left, low, high, right = m.groups()
    return _Interval(float(low), None if high == "inf" else FLOAT32_MAX if high == "f32" else float(high),
                     left == "(", right == ")")


def doc(default: Any, help: str, within: str | None = None) -> Any:
    """A dataclass field with its one-line help: what it is, its unit.  ``within``: the interval a numeric
    field lies in (``"[1, inf)"``, ``"(0, 1]"``; ``f32``: float32's largest value), checked by
    :func:`check_within` and stated in the flag's help.  The one source of a flag's ``--help`` text (the
    default is appended there) and of its range."""
    metadata = {"help": help} if within is None else {"help": help, "within": _interval(within)}
    return dataclasses.field(default=default, metadata=metadata)


def check_within(obj: Any, flag: Any = lambda name: "--" + name.replace("_", "-")) -> None:
    """Each field of the dataclass ``obj`` declared with an interval (:func:`doc`) lies in it: an integer
    (:func:`check_int`) for an ``int`` field, a finite number otherwise; None passes where it is the default."""
    types_ = _field_types(type(obj))
    for f in dataclasses.fields(obj):
        iv, value = f.metadata.get("within"), getattr(obj, f.name)
        if iv is None or (value is None and f.default is None):
            continue
        if _strip_optional(types_[f.name])[0] is int:  # an open end at an integer excludes it
            check_int(flag(f.name), value, low=int(iv.low) + iv.low_open,
                      high=None if iv.high is None else int(iv.high) - iv.high_open)
        else:
            check_number(flag(f.name), value, low=iv.low, high=iv.high, low_open=iv.low_open, high_open=iv.high_open)


def field_help(cls: type, name: str) -> str:
    """The help text :func:`doc` gave field ``name`` of ``cls`` (empty when it has none)."""
    return next((f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name), "")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: Sequence[str] = ()) -> None:
    """Add one ``--field-name`` flag per dataclass field (value kept as a raw string, default None),
    its help the field's :func:`doc` text, the choices of a ``Literal`` and the default.

    Values are converted and validated later by :func:`resolve_config`, so that flags and TOML keys
    go through the same code.  Booleans take ``--flag`` / ``--no-flag``.
    """
    types_ = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, annotation in types_.items():
        if name in exclude:
            continue
        flag = "--" + name.replace("_", "-")
        base, _ = _strip_optional(annotation)
        default = fields[name].default if fields[name].default is not dataclasses.MISSING else None
        parts = [fields[name].metadata.get("help", "")]
        if (iv := fields[name].metadata.get("within")) is not None:
            parts.append(iv.text(integer=base is int))
        if typing.get_origin(base) is Literal:
            parts.append("one of " + ", ".join(map(str, typing.get_args(base))))
        parts.append(f"(default: {default!r})")
        help_text = "; ".join(p for p in parts[:-1] if p) + " " + parts[-1]
        help_text = help_text.strip().replace("%", "%%")  # argparse formats help with %
        if base is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=help_text)


def config_file_values(cls: type, config_path: str | Path, *, section: str | None = None) -> dict[str, Any]:
    """The fields a ``--config`` TOML file sets (optionally one ``section`` of it), names with
    underscores; an unknown key raises :class:`ConfigError` naming it, the file and the allowed keys."""
    data = load_toml(config_path)
    if section is not None and isinstance(data.get(section), dict):
        data = data[section]
    return {name: data[key] for key, name in _field_names(data, _field_types(cls), str(config_path)).items()}


def given_values(cls: type, args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The fields given on the command line (flags left out are None and are not included)."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    types_ = _field_types(cls)
    return {name: value for name, value in given.items() if name in types_ and value is not None}


def resolve_config(
    cls: type,
    args: argparse.Namespace | Mapping[str, Any],
    *,
    config_path: str | Path | None = None,
    section: str | None = None,
    base: Mapping[str, Any] | None = None,
) -> Any:
    """Merge ``base`` < TOML file (optionally one ``section`` of it) < command-line values.

    Only the command-line values that were given (not None) override.  Unknown TOML keys raise.
    """
    merged: dict[str, Any] = dict(base or {})
    if config_path is not None:
        merged.update(config_file_values(cls, config_path, section=section))
    merged.update(given_values(cls, args))
    return config_from_mapping(cls, merged, source=str(config_path) if config_path else "command line")


def canonical_json(mapping: Mapping[str, Any]) -> str:
    """A configuration as canonical JSON (sorted keys, no spaces, strict: no NaN)."""
    return json.dumps(dict(mapping), sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_digest(mapping: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of :func:`canonical_json`: the identity of a run's configuration (both
    ``useful-sim`` and ``useful-train`` key their runs by it)."""
    return hashlib.sha256(canonical_json(mapping).encode()).hexdigest()


def canonical_numbers(obj: Any) -> None:
    """Store every value of a validated (frozen) configuration dataclass in its field's plain type:
    ``float``, ``int`` and ``bool`` fields (optional ones too) hold Python floats, ints and bools, so
    ``lr=1``, ``lr=1.0`` and ``lr=np.float32(1)`` are one configuration, in its JSON and its digest.
    Call it last in ``__post_init__``, after the checks (an invalid value is reported as given)."""
    plain = {float: float, int: int, bool: bool}
    for name, annotation in _field_types(type(obj)).items():
        base, _ = _strip_optional(annotation)
        value = getattr(obj, name)
        if base in plain and value is not None:
            object.__setattr__(obj, name, plain[base](value))


def to_jsonable(obj: Any) -> Any:
    """A dataclass (or nested structure) as plain JSON data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj
