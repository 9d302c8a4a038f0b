"""The declarative-schema layer (pydantic) shared by every settings class in turnout.

A schema is a pydantic dataclass whose fields carry their default, unit, documentation and
constraints (``Field(ge=..., description=...)``, validators as ``AfterValidator``). Scalar
fields are strict, so a TOML file or Python code must give the right type (``port = "6001"``
is refused), while text sources (flags, environment variables, a TUI form) are parsed by
pydantic's string mode (``validate_strings``). This module adds what pydantic leaves to its
users: turning its structured errors into turnout's one-line messages (where the value came
from, the dotted key, what was expected, did-you-mean) and validating the keys one source gave
on their own, so each error can name its source.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

__all__ = [
    "PARTIAL", "Key", "SettingError", "dotted", "expectation", "field_extra", "got", "keys",
    "problem", "raise_first", "validate", "validate_partial", "validate_text",
]

#: Validation context for one source's keys alone: cross-field checks wait for the whole.
PARTIAL = {"partial": True}
TRUE_WORDS = "1/true/yes/on or 0/false/no/off"
_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument")


class SettingError(ValueError):
    """A setting has a bad value; ``setting`` names it and, when known, where it came from."""

    def __init__(self, setting: str, message: str, *, field: str | None = None) -> None:
        super().__init__(setting, message)
        self.setting = setting
        self.message = message
        # The schema field concerned, if any: lets a loader relabel the error with its source.
        self.field = field

    def __str__(self) -> str:
        return f"invalid {self.setting}: {self.message}"


def dotted(loc: Iterable[int | str]) -> str:
    """('apps', 0, 'key') -> 'apps[0].key'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", tuple: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _field_info(schema: type, loc: tuple[int | str, ...]) -> FieldInfo | None:
    """The FieldInfo at ``loc`` (following nested dataclasses through tuples), if any."""
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(schema, "__pydantic_fields__", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        schema = info.annotation  # type: ignore[assignment]
        if get_origin(schema) is tuple:
            schema = get_args(schema)[0]
    return info


def field_extra(info: FieldInfo | None, key: str) -> Any:
    """A schema-specific annotation of a field (``Field(json_schema_extra={key: ...})``)."""
    extra = info.json_schema_extra if info is not None else None
    return extra.get(key) if isinstance(extra, dict) else None


def _bound(info: FieldInfo | None, name: str) -> Any:
    for item in info.metadata if info else ():
        value = getattr(item, name, None)
        if value is not None:
            return value
    return None


def _shown(value: Any, info: FieldInfo | None) -> str:
    if info is not None and info.annotation is float and type(value) is int:
        value = float(value)  # an int given for a float setting reads as the float it becomes
    return str(value)


def describe(error: ErrorDetails, schema: type) -> str:
    """One pydantic error as a sentence that reads after 'invalid <setting>: '."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    info = _field_info(schema, tuple(error["loc"]))
    # A field's own wording of what it expects, for the field itself (not its items).
    expected = field_extra(info, "expect") if not isinstance(error["loc"][-1], int) else None
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in ("greater_than_equal", "less_than_equal"):
        lo, hi = _bound(info, "ge"), _bound(info, "le")
        if lo is not None and hi is not None:
            return f"must be between {lo} and {hi} (got {_shown(value, info)})"
        return f"must be {'>=' if lo is not None else '<='} {lo if lo is not None else hi} " \
               f"(got {_shown(value, info)})"
    if kind in ("greater_than", "less_than"):
        op, name = (">", "gt") if kind == "greater_than" else ("<", "lt")
        limit = _bound(info, name) if _bound(info, name) is not None else ctx[name]
        return f"must be {op} {limit} (got {_shown(value, info)})"
    parsing = {"int_parsing": "an integer", "int_from_float": "an integer",
               "float_parsing": "a number", "finite_number": "a finite number",
               "bool_parsing": f"a boolean (use {TRUE_WORDS})"}.get(kind)
    if parsing is not None and isinstance(value, str):  # text from a flag or a variable
        return f"{value!r} is not {parsing}"
    if kind == "finite_number":
        return f"must be a finite number (got {value})"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length', 1)} item(s)"
    if kind == "missing":
        return f"missing {error['loc'][-1]!r}"
    if kind in _UNKNOWN:
        return "unknown setting"
    what = {"int_type": "an integer", "int_from_float": "an integer", "float_type": "a number",
            "bool_type": "a boolean", "string_type": "a string", "tuple_type": "an array",
            "list_type": "an array", "dataclass_type": "a table", "dict_type": "a table",
            "dataclass_exact_type": "a table", "model_type": "a table"}.get(kind)
    if what is not None:
        return f"must be {expected or what}, not {_type_name(value)}"
    return error["msg"]


def raise_first(exc: ValidationError, schema: type, label: Callable[[str], str]) -> None:
    """Raise the first error of ``exc`` as a SettingError; ``label`` names a dotted key.

    An unknown key gets a did-you-mean from its siblings; a SettingError raised by a
    validator (a cross-field check) is re-raised as it is.
    """
    # An unknown key first: its did-you-mean also explains a "missing" error next to it.
    error = sorted(exc.errors(include_url=False), key=lambda e: e["type"] not in _UNKNOWN)[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, SettingError):
        raise cause from None
    loc = tuple(error["loc"])
    message = describe(error, schema)
    if error["type"] == "missing":
        loc = loc[:-1]
    elif error["type"] in _UNKNOWN:
        parent = _field_info(schema, loc[:-1]) if len(loc) > 1 else None
        owner = parent.annotation if parent is not None else schema
        if get_origin(owner) is tuple:
            owner = get_args(owner)[0]
        names = list(getattr(owner, "__pydantic_fields__", {}))
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        message += f"; did you mean {close[0]!r}?" if close else \
            f" (expected {', '.join(names)})" if len(loc) > 1 else ""
    key = dotted(loc)
    raise SettingError(label(key), message, field=str(loc[0]) if loc else None) from None


def validate_partial(schema: type, values: Mapping[str, Any], *, text: bool,
                     label: Callable[[str], str]) -> dict[str, Any]:
    """Check the keys one source gave, alone: typed values for exactly those keys.

    ``text``: the values are strings (flags, environment) parsed as pydantic's string mode
    does; otherwise they are typed (TOML, Python) and checked strictly.
    """
    adapter = _adapter(schema)
    raw = dict(values)
    try:
        if text:
            checked = adapter.validate_strings(
                {k: v if isinstance(v, str) else str(v).lower() for k, v in raw.items()},
                context=PARTIAL)
        else:
            checked = adapter.validate_python(raw, context=PARTIAL)
    except ValidationError as exc:
        raise_first(exc, schema, label)
    return {key: getattr(checked, key) for key in raw}


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _adapter(schema: type) -> TypeAdapter[Any]:
    if schema not in _ADAPTERS:
        _ADAPTERS[schema] = TypeAdapter(schema)
    return _ADAPTERS[schema]


# ---------------------------------------------------------------- the "expected X, got Y" style
# Experiment files and interactive faults word every bad value as what the key accepts (read
# from the field: its type, bounds and ``expect``/``unit`` annotations) and what was given.


def got(value: object) -> str:
    """A TOML value as an error shows it: ``'ten'``, ``true``, ``a table``."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _g(value: float) -> str:
    return f"{value:g}"


def expectation(info: FieldInfo) -> str:
    """What a field accepts, in words: ``an integer between 1 and 64``, ``true or false``."""
    what, kind = field_extra(info, "expect"), info.annotation
    what = str(what) if what is not None else None  # an object may word it when asked
    if get_origin(kind) in (Union, UnionType):  # X | None: optional, unset by default
        kind = next(a for a in get_args(kind) if a is not type(None))
    if kind is bool:
        return what or "true or false"
    if get_origin(kind) is Literal:
        return what or "one of " + ", ".join(f"'{o}'" for o in get_args(kind))
    if kind not in (int, float):
        return what or "a non-empty string"
    lo, hi, lo_open = _bound(info, "ge"), _bound(info, "le"), _bound(info, "gt") is not None
    lo = _bound(info, "gt") if lo_open else lo
    text = what or ("an integer" if kind is int else "a number")
    if lo is not None and hi is not None:
        return f"{text} between {_g(lo)} and {_g(hi)}"
    if lo is not None:
        return f"{text} {'>' if lo_open else '>='} {_g(lo)}"
    return f"{text} <= {_g(hi)}" if hi is not None else text


def field_names(schema: Any) -> list[str]:
    return list(getattr(schema, "__pydantic_fields__", {}))


def problem(exc: ValidationError, schema: type, *, allowed: list[str] | None = None,
            why: str = "") -> tuple[str, str]:
    """The first error of ``exc`` as (dotted key, "expected X, got Y").

    A SettingError raised by a validator (a cross-field check) keeps its own key (relative to
    where it was raised) and wording; an unknown key gets a did-you-mean and the ``allowed``
    keys (default: the fields of its table), ``why`` qualifying it ("for kind 'x'").
    """
    error = sorted(exc.errors(include_url=False), key=lambda e: e["type"] not in _UNKNOWN)[0]
    loc, value = tuple(error["loc"]), error.get("input")
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, SettingError):
        return dotted((*loc, cause.setting)), cause.message
    if error["type"] == "value_error":
        return dotted(loc), str(cause)
    if error["type"] in _UNKNOWN:
        owner = _field_info(schema, loc[:-1]).annotation if len(loc) > 1 else schema  # type: ignore[union-attr]
        if get_origin(owner) is tuple:
            owner = get_args(owner)[0]
        names = allowed if allowed is not None else field_names(owner)
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        text = "unknown key" + (f" {why}" if why else "")
        text += f" (did you mean '{close[0]}'?)" if close else ""
        return dotted(loc), text + "; allowed: " + ", ".join(names)
    if isinstance(loc[-1], int):  # an item of an array
        key = loc[:-1]
        info = _field_info(schema, key)
        expected = expectation(info) if info is not None else "a valid item"
        return dotted(key), f"expected {expected}, got {got(value)} in the array"
    info = _field_info(schema, loc)
    expected = expectation(info) if info is not None else "a table"
    if error["type"] == "missing":
        return dotted(loc), f"missing; expected {expected}"
    return dotted(loc), f"expected {expected}, got {got(value)}"


@dataclass(frozen=True)
class Key:
    """One field of a schema as docs and forms show it: name, what it accepts, unit, default."""

    name: str
    info: FieldInfo

    @property
    def required(self) -> bool:
        return self.info.is_required()

    @property
    def default(self) -> Any:
        return None if self.info.is_required() else self.info.get_default(call_default_factory=True)

    @property
    def unit(self) -> str:
        return field_extra(self.info, "unit") or "—"

    @property
    def doc(self) -> str:
        return self.info.description or ""

    @property
    def integer(self) -> bool:
        return self.info.annotation is int

    @property
    def boolean(self) -> bool:
        return self.info.annotation is bool

    @property
    def choices(self) -> tuple[Any, ...]:
        """The values of a field that takes one of a list (a Literal); () otherwise."""
        return get_args(self.info.annotation) if get_origin(self.info.annotation) is Literal \
            else ()

    def expected(self) -> str:
        return str(expectation(self.info))


def keys(schema: type) -> tuple[Key, ...]:
    return tuple(Key(name, info) for name, info in schema.__pydantic_fields__.items())  # type: ignore[attr-defined]


def validate(schema: type, values: Mapping[str, Any], *, context: Any = None) -> Any:
    """Build ``schema`` from typed values (TOML, JSON, Python); raises ValidationError."""
    return _adapter(schema).validate_python(dict(values), context=context)


def validate_text(schema: type, values: Mapping[str, Any]) -> Any:
    """Build ``schema`` from text values (a form, a flag) parsed by pydantic's string mode."""
    return _adapter(schema).validate_strings(dict(values))
