"""Plain data (YAML, JSON) -> frozen stdlib dataclasses, checked by pydantic; errors name the key path.

    cfg = build(TrainConfig, yaml.safe_load(text), source="run.yaml")

* Types are strict: an int is not a bool, 2.0 is not an int, null only where a field is optional, Literal
  values as written; lists become tuples where a field is a tuple; an unknown key is an error. `Float` fields
  also take a numeric string (YAML 1.1 reads `1e-4` as one); every float field takes an int.
* A mapping given for a section (a dataclass-typed field with a default) merges over that default, so
  `{param_group2: {lr: 2e-4}}` keeps the group's other defaults.
* A problem is one `ConfigError` line naming the key path and where its value came from, e.g.
  ``unknown config key 'optim.betaz' in configs/x.yaml (did you mean 'betas'?)``. A dataclass's
  `__post_init__` names one of its fields by raising `FieldError`; its other ValueErrors name the dataclass.

Of tiodepth_jax it imports only `errors`, so that the model configs (which `tiodepth_jax.config` imports) use it
too.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic

from tiodepth_jax.errors import InputError

__all__ = ["ConfigError", "FieldError", "Float", "Where", "build", "from_dict", "plain", "merge",
           "short_repr"]


class ConfigError(InputError):
    """A configuration problem (a ValueError; commands print it as one line): the message names the key path
    and the file or override it came from."""


class FieldError(ValueError):
    """Raised by a dataclass's `__post_init__`: `field` is a dotted key path relative to the dataclass."""

    def __init__(self, field: str, msg: str):
        super().__init__(f"{field}: {msg}")
        self.field = field
        self.msg = msg


def _numeric_string_as_float(value):
    """`float(value)` for a numeric string; anything else as it is, for pydantic to check."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


Float = Annotated[float, pydantic.BeforeValidator(_numeric_string_as_float)]  # a float, an int or '1e-4'


def plain(obj):
    """Dataclasses and mappings -> dicts, tuples -> lists, recursively (new containers, same leaves)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def merge(base, over):
    """Recursive merge of plain data: mappings merge, everything else (lists, scalars, null) replaces."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        return {**base, **{k: merge(base[k], v) if k in base else plain(v) for k, v in over.items()}}
    return plain(over)


class Where:
    """Where a key path's value came from: the file (or override) that last set it or one of its parents."""

    def __init__(self, default: str | None):
        self.default = default
        self.origins: dict[tuple, str] = {}

    def record(self, data, source: str, prefix: tuple = ()):
        self.origins[prefix] = source
        if isinstance(data, Mapping):
            for k, v in data.items():
                self.record(v, source, prefix + (str(k),))

    def __call__(self, path: tuple) -> str | None:
        for n in range(len(path), -1, -1):
            if path[:n] in self.origins:
                return self.origins[path[:n]]
        return self.default

    def suffix(self, path: tuple) -> str:
        """' in <file>', ' (override ...)' or '' (no source known), for the end of a message."""
        src = self(path)
        return "" if src is None else f" ({src})" if src.startswith("override") else f" in {src}"


# ---------------------------------------------------------------------------------------------------------
# Validation


@functools.cache
def _validator(cls) -> pydantic.TypeAdapter:
    """Strict JSON validation of `cls` without unknown keys: sets `cls.__pydantic_config__`, which the nested
    dataclasses inherit. JSON rather than Python objects: pydantic's strict Python mode takes only instances
    for a dataclass, not mappings (its suggested way around this is to validate JSON)."""
    return pydantic.TypeAdapter(pydantic.with_config(pydantic.ConfigDict(strict=True, extra="forbid"))(cls))


def build(cls, data: Mapping, *, source: str | None = "<dict>", where: Where | None = None):
    """A `cls` dataclass from plain data; a problem raises a `ConfigError` naming the key path."""
    where = where or Where(source)
    if not isinstance(data, Mapping):
        raise ConfigError(f"a configuration must be a mapping, got {short_repr(data)}{where.suffix(())}")
    try:
        text = json.dumps(_with_defaults(cls, data))
    except (TypeError, ValueError) as e:  # a date, a set, a tuple as a key, ...
        raise ConfigError(f"config values must be strings, numbers, bools, nulls, lists or mappings ({e})"
                          f"{where.suffix(())}") from None
    try:
        return _validator(cls).validate_json(text)
    except pydantic.ValidationError as e:
        raise ConfigError(_message(cls, json.loads(text), e, where)) from None


def from_dict(cls, data: Mapping, what: str):
    """`build` for a model config (e.g. a checkpoint's model.json); errors read "not a <what>: <problem>"."""
    try:
        return build(cls, data, source=None)
    except ConfigError as e:
        raise ConfigError(f"not a {what}: {e}") from None


def _with_defaults(cls, data: Mapping) -> dict:
    """`data` with each section given as a mapping merged over that section's default, recursively."""
    hints, out = typing.get_type_hints(cls), dict(data)
    for f in dataclasses.fields(cls):
        tp, value = hints[f.name], out.get(f.name)
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            if default is not dataclasses.MISSING:
                value = merge(plain(default), value)
            out[f.name] = _with_defaults(tp, value)
    return out


# ---------------------------------------------------------------------------------------------------------
# Error messages


_UNKNOWN_KEY = ("unexpected_keyword_argument", "extra_forbidden")


def _message(cls, data, error: pydantic.ValidationError, where: Where) -> str:
    """The first problem (an unknown key if there is one) as one line: key path, problem, origin."""
    errors = error.errors(include_url=False)
    err = next((e for e in errors if e["type"] in _UNKNOWN_KEY), errors[0])
    loc = tuple(str(k) for k in err["loc"])
    path, tp = _field(cls, loc)
    if err["type"] in _UNKNOWN_KEY:
        key, known = loc[len(path)], [f.name for f in dataclasses.fields(tp) if f.init]
        hint = difflib.get_close_matches(key, known, n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else f"; known keys: {', '.join(known)}"
        return f"unknown config key '{_dotted(path + (key,))}'{where.suffix(path + (key,))}{extra}"
    if err["type"] == "missing" and path == loc:
        return f"missing required config key '{_dotted(path)}'{where.suffix(path[:-1])}"
    if err["type"] == "value_error" and path == loc and dataclasses.is_dataclass(tp):  # from __post_init__
        exc = err["ctx"]["error"]
        if isinstance(exc, FieldError):
            path, msg = path + tuple(exc.field.split(".")), exc.msg
        else:
            msg = str(exc)
    else:
        value = functools.reduce(lambda node, key: node[key], path, data)
        msg = f"expected {_describe(tp)}, got {short_repr(value)}"
    return (f"{_dotted(path)}: {msg}" if path else msg) + where.suffix(path)


def _field(cls, loc: tuple) -> tuple[tuple, Any]:
    """The longest start of `loc` that names dataclass fields and mapping keys, and the type found there."""
    path, tp = (), cls
    for key in loc:
        if dataclasses.is_dataclass(tp) and key in {f.name for f in dataclasses.fields(tp) if f.init}:
            tp = typing.get_type_hints(tp)[key]
        elif typing.get_origin(tp) is dict and typing.get_args(tp):
            tp = typing.get_args(tp)[1]
        else:
            break
        path += (key,)
    return path, tp


def _dotted(path: tuple) -> str:
    return ".".join(path)


def short_repr(value) -> str:
    """`repr(value)`, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_NAMES = {int: ("an int", "ints"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("a bool", "bools"), type(None): ("null", "nulls")}


def _describe(tp, plural: bool = False) -> str:
    """'a list of 2 ints', 'a string or null', "one of 'float32', 'bfloat16'", ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _NAMES:
        return _NAMES[tp][plural]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args)
    if origin is tuple:
        lists = "lists" if plural else "a list"
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{lists} of {_describe(args[0], True)}"
        if len(set(args)) == 1:
            return f"{lists} of {len(args)} {_describe(args[0], True)}"
        return f"{lists} of (" + ", ".join(_describe(a) for a in args) + ")"
    if tp is dict or origin is dict or dataclasses.is_dataclass(tp):
        return "mappings" if plural else "a mapping"
    return getattr(tp, "__name__", str(tp))
