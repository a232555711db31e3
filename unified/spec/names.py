"""Layer-name patterns, as a step's ``targets`` write them: an fnmatch glob (``features.*``)
or ``re:<regex>`` (a full match). One definition for every backend, torch or not. And how a
note shows a long list of layer names."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

REGEX_PREFIX = "re:"


def first_few(names: Sequence[str], limit: int = 3) -> str:
    """'a, b, c and 4 more': the first ``limit`` names of a list a note would make too long."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def name_matches(name: str, pattern: str) -> bool:
    """Does the layer called ``name`` match ``pattern`` (glob, or ``re:`` full match)?"""
    if pattern.startswith(REGEX_PREFIX):
        return re.fullmatch(pattern[len(REGEX_PREFIX):], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Does ``name`` match at least one of ``patterns``?"""
    return any(name_matches(name, p) for p in patterns)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be matched (a ``re:`` pattern that does not compile), or None."""
    if not pattern.startswith(REGEX_PREFIX):
        return None
    try:
        re.compile(pattern[len(REGEX_PREFIX):])
    except re.error as exc:
        return f"{pattern!r} is not a valid regular expression ({exc})"
    return None
