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
from typing import Any, get_args, get_origin

from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

__all__ = [
    "PARTIAL", "SettingError", "dotted", "field_extra", "raise_first", "validate_partial",
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
