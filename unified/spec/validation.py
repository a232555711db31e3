"""Pydantic validation errors as one line per mistake: ``file:line: field: what is wrong``.

One mistake is one line: a misspelt key that leaves a required field missing ("amount" for
"sparsity") gives pydantic two errors, "sparsity: Field required" and "amount: extra
input"; they become the single line "unknown field 'amount'; did you mean 'sparsity'?".
Names (fields, enum values) get a "did you mean" when one is close; values follow
scikit-learn's pattern "must be one of {...}. Got 'z' instead".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, get_args

from pydantic import BaseModel, RootModel, ValidationError

from unified.spec.errors import closest, did_you_mean, one_line
from unified.spec.scenario import Scenario
from unified.spec.yamlio import field_name

Loc = tuple[Any, ...]
_QUOTED = re.compile(r"'([^']*)'")
# pydantic's type errors, said the way the rest of the messages say them
_KINDS = {
    "string_type": "a text", "int_type": "a whole number", "int_parsing": "a whole number",
    "int_from_float": "a whole number", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false", "finite_number":
    "a finite number",
}


def _normalize_loc(loc: Loc) -> Loc:
    # pydantic puts union/root names into loc; map back to the YAML path.
    return tuple(part for part in loc if part not in ("root",) and not str(part).startswith(
        "function-"))


def _line_for(loc: Loc, lines: dict[tuple[Any, ...], int]) -> int | None:
    for end in range(len(loc), -1, -1):
        prefix = tuple(str(p) if not isinstance(p, int) else p for p in loc[:end])
        if prefix in lines:
            return lines[prefix]
    return None


def _annotation_at(loc: Loc, root: type[BaseModel] = Scenario) -> Any:
    """The type annotation that validates the value at ``loc`` (best effort; None if lost)."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return None
            current = info.annotation
        else:  # dict[str, X], tuple[X, ...], tuple[X, Y, Z]
            args = [a for a in get_args(current) if a is not type(None) and a is not Ellipsis]
            if not args:
                return None
            current = args[part] if isinstance(part, int) and part < len(args) else args[-1]
    return _unwrap(current)


def _unwrap(current: Any) -> Any:
    """Through RootModel and ``X | None`` to the class that validates."""
    while True:
        if isinstance(current, type) and issubclass(current, RootModel):
            current = current.model_fields["root"].annotation
            continue
        args = [a for a in get_args(current) if a is not type(None)]
        if get_args(current) and not isinstance(current, type) and len(args) == 1 and (
                type(None) in get_args(current)):
            current = args[0]
            continue
        return current


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``loc`` (best effort)."""
    current = _annotation_at(loc)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _choices(expected: str) -> list[str]:
    """``"'a', 'b' or 'c'"`` → ``['a', 'b', 'c']`` (pydantic's ctx['expected'])."""
    quoted = _QUOTED.findall(expected)
    return quoted or [p.strip() for p in re.split(r",| or ", expected) if p.strip()]


def _got(value: Any) -> str:
    return one_line(repr(value), 80)


def _missing_message(loc: Loc, error: Mapping[str, Any]) -> str:
    if loc and isinstance(loc[-1], int):  # a fixed-length tuple given too few items
        args = get_args(_annotation_at(loc[:-1]))
        size = f"{len(args)} items" if args and Ellipsis not in args else "more items"
        return f"must have {size}. Got {_got(error.get('input'))} instead"
    model = _model_at(loc[:-1])
    info = model.model_fields.get(str(loc[-1])) if model else None
    text = info.description if info is not None and info.description else ""
    hint = (f": {text}" if "(" in text else f" ({text})") if text else ""
    return f"required field is missing{hint}"


def _message(error: Mapping[str, Any], loc: Loc) -> str:
    kind = error["type"]
    value = error.get("input")
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if kind == "missing":
        return _missing_message(loc, error)
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        fields = list(model.model_fields) if model else []
        hint = did_you_mean(loc[-1], fields)
        return f"unknown field {loc[-1]!r}" + (hint or (
            f" (allowed: {', '.join(fields)})" if fields else ""))
    if kind in ("enum", "literal_error"):
        expected = str((error.get("ctx") or {}).get("expected", ""))
        hint = did_you_mean(value, _choices(expected)) if isinstance(value, str) else ""
        return f"must be one of {expected}. Got {_got(value)} instead{hint}"
    if kind == "too_long":
        limit = (error.get("ctx") or {}).get("max_length")
        return f"must have at most {limit} items. Got {_got(value)} instead"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping. Got {_got(value)} instead"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list. Got {_got(value)} instead"
    if kind in _KINDS:
        return f"must be {_KINDS[kind]}. Got {_got(value)} instead"
    if kind == "invalid_key":
        return f"keys must be names (text). Got {_got(value)} instead"
    scalar = isinstance(value, str | int | float | bool) or value is None
    if scalar and "Got " not in msg and "input" in error:
        msg = f"{msg}. Got {_got(value)} instead"
    return msg


def error_message(error: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    """The message of one pydantic error at ``loc`` (a path from the scenario's root), in the
    one error shape: what is wrong, then what was given."""
    return _message(error, _normalize_loc(loc))


def _renames(errors: list[tuple[Loc, Mapping[str, Any]]]) -> dict[Loc, str]:
    """Unknown keys that stand for a missing required field of the same mapping: the key's
    loc → the field it was meant to be (closest spelling; else the only candidate)."""
    missing, extra = _key_problems(errors)
    renames: dict[Loc, str] = {}
    for parent, keys in extra.items():
        wanted = list(missing.get(parent, []))
        for key in keys:
            target = closest(key, wanted)
            if target is None and len(keys) == 1 and len(wanted) == 1:
                target = wanted[0]
            if target is not None:
                renames[(*parent, key)] = target
                wanted.remove(target)
    return renames


def _key_problems(errors: list[tuple[Loc, Mapping[str, Any]]],
                  renames: Mapping[Loc, str] | None = None
                  ) -> tuple[dict[Loc, list[str]], dict[Loc, list[Any]]]:
    """Per mapping: its missing required fields and its unknown keys (without the pairs of
    ``renames``)."""
    paired = set(renames or ())
    meant = {(*loc[:-1], target) for loc, target in (renames or {}).items()}
    missing: dict[Loc, list[str]] = {}
    extra: dict[Loc, list[Any]] = {}
    for loc, error in errors:
        if not loc or isinstance(loc[-1], int) or loc in paired or loc in meant:
            continue
        if error["type"] == "missing":
            missing.setdefault(loc[:-1], []).append(str(loc[-1]))
        elif error["type"] == "extra_forbidden":
            extra.setdefault(loc[:-1], []).append(loc[-1])
    return missing, extra


def _mapping_message(parent: Loc, missing: list[str], extra: list[Any]) -> str:
    """Several key problems of one mapping, said in one line."""
    model = _model_at(parent)
    fields = list(model.model_fields) if model else []
    parts = []
    if extra:
        names = ", ".join(repr(k) for k in extra)
        parts.append(f"unknown field{'s' if len(extra) > 1 else ''} {names}")
    if missing:
        parts.append(f"required field{'s are' if len(missing) > 1 else ' is'} missing: "
                     f"{', '.join(missing)}")
    allowed = f" (allowed: {', '.join(fields)})" if extra and fields else ""
    return "; ".join(parts) + allowed


def format_validation_error(
    exc: ValidationError, file: str, lines: dict[tuple[Any, ...], int], prefix: Loc = ()
) -> list[str]:
    """One line per mistake: ``file:line: field: message``; ``prefix`` is the path of the
    validated part when it is not the whole scenario (e.g. ``("model",)``).

    A misspelt key that leaves a required field missing is one line (on the key); several
    other key problems of one mapping (unknown keys, missing fields) are one line (on the
    mapping).
    """
    errors = _relevant([((*prefix, *_normalize_loc(tuple(e["loc"]))), e) for e in exc.errors()],
                       lines)
    renames = _renames(errors)
    explained = {(*loc[:-1], target) for loc, target in renames.items()}
    missing, extra = _key_problems(errors, renames)
    grouped = {parent for parent in {*missing, *extra}
               if len(missing.get(parent, ())) + len(extra.get(parent, ())) > 1}
    problems: list[str] = []
    for loc, error in errors:
        if error["type"] == "missing" and loc in explained:
            continue  # said once, on the misspelt key's line
        if loc in renames:
            message = f"unknown field {loc[-1]!r}; did you mean {renames[loc]!r}?"
        elif error["type"] in ("missing", "extra_forbidden") and loc and loc[:-1] in grouped:
            loc = loc[:-1]
            message = _mapping_message(loc, missing.get(loc, []), extra.get(loc, []))
        else:
            message = _message(error, loc)
        if error["type"] == "missing" and loc and isinstance(loc[-1], int):
            loc = loc[:-1]  # too few items: the list is wrong, not an item that is not there
        line = _line_for(loc, lines)
        where = f"{file}:{line}" if line else file
        text = f"{where}: {field_name(loc)}: {one_line(message, 400)}"
        if text not in problems:
            problems.append(text)
    return problems


def _relevant(errors: list[tuple[Loc, Mapping[str, Any]]],
              lines: dict[tuple[Any, ...], int]) -> list[tuple[Loc, Mapping[str, Any]]]:
    """The errors without those that only repeat another one."""
    nested = {loc[:end] for loc, _ in errors for end in range(len(loc))}
    # pydantic also counts a list whose item failed as too short: the item's error says it
    kept = [(loc, e) for loc, e in errors if not (e["type"] == "too_short" and loc in nested)]
    if ("model",) not in lines and any(loc[:1] == ("models",) for loc, _ in kept):
        # `model` comes from `models` (a copy of the first): what is wrong there is said there
        kept = [(loc, e) for loc, e in kept if loc[:1] != ("model",)]
    return kept
