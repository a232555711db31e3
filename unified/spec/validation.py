"""Pydantic validation errors as one line each: ``file:line: field: what is wrong``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from pydantic import BaseModel, RootModel, ValidationError

from unified.spec.scenario import Scenario
from unified.spec.yamlio import field_name


def _normalize_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic puts union/root names into loc; map back to the YAML path.
    return tuple(part for part in loc if part not in ("root",) and not str(part).startswith(
        "function-"))


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    for end in range(len(loc), -1, -1):
        prefix = tuple(str(p) if not isinstance(p, int) else p for p in loc[:end])
        if prefix in lines:
            return lines[prefix]
    return None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``loc`` (best effort)."""
    current: Any = Scenario
    for part in loc:
        if isinstance(current, type) and issubclass(current, RootModel):
            current = current.model_fields["root"].annotation
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return None
            current = info.annotation
        else:  # dict[str, X], tuple[X, ...], X | None
            args = [a for a in get_args(current) if a is not type(None) and a is not Ellipsis]
            if not args:
                return None
            current = args[-1]
        while get_args(current) and not (isinstance(current, type)):
            args = [a for a in get_args(current) if a is not type(None)]
            if len(args) != 1:
                break
            current = args[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _message(error: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if error["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = f"; allowed: {', '.join(model.model_fields)}" if model else ""
        return f"unknown field {loc[-1]!r}{allowed}"
    value = error.get("input")
    scalar = isinstance(value, str | int | float | bool) or value is None
    if error["type"] != "missing" and scalar and "Got " not in msg and "input" in error:
        msg = f"{msg}. Got {value!r} instead"
    return msg


def error_message(error: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    """The message of one pydantic error at ``loc`` (a path from the scenario's root), in the
    one error shape: what is wrong, then what was given."""
    return _message(error, _normalize_loc(loc))


def format_validation_error(
    exc: ValidationError, file: str, lines: dict[tuple[Any, ...], int]
) -> list[str]:
    """One line per problem: ``file:line: field: message``."""
    problems = []
    for error in exc.errors():
        loc = _normalize_loc(tuple(error["loc"]))
        # An unknown key inside a model: point at the key itself and name the allowed ones.
        line = _line_for(loc, lines)
        where = f"{file}:{line}" if line else file
        problems.append(f"{where}: {field_name(loc)}: {_message(error, loc)}")
    return problems
