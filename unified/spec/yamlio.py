"""YAML read safely, with the line of every key and item, for one-line error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from unified.spec.errors import SpecError

YPath = tuple[str | int, ...]


def _line_map(node: yaml.Node, path: YPath, out: dict[YPath, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*path, str(key_node.value))
            _line_map(value_node, key, out)
            out[key] = key_node.start_mark.line + 1  # a key points at its own line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, (*path, index), out)


def read_yaml(path: Path) -> tuple[Any, dict[YPath, int]]:
    """``yaml.safe_load`` the file; return (data, {path: 1-based line})."""
    if not path.is_file():
        raise SpecError([f"{path}: file not found"])
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = " ".join(str(exc.problem or exc).split())
        raise SpecError([f"{where}: invalid YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{path}: invalid YAML: {str(exc).splitlines()[0]}"]) from None
    lines: dict[YPath, int] = {}
    if node is not None:
        _line_map(node, (), lines)
    return data, lines


def field_name(path: YPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"
