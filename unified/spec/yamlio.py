"""YAML read safely, with the line of every key and item, for one-line error messages.

Every way a file can fail to be a YAML text (missing, unreadable, binary, not UTF-8, a
character YAML forbids, a syntax error, several documents, a duplicate key) is one
:class:`SpecError` line naming the file and, where there is one, the line.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml

from unified.spec.errors import SpecError, one_line

YPath = tuple[str | int, ...]

# YAML 1.1 lets a stream start with a UTF-16 / UTF-32 byte-order mark; PyYAML reads those.
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_SNIFF = 8192  # bytes looked at to tell a binary file from a text


def _line_map(node: yaml.Node, path: YPath, out: dict[YPath, int], where: str) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value)
            line = key_node.start_mark.line + 1
            if name in seen and name != "<<":
                raise SpecError([f"{where}:{line}: {field_name((*path, name))}: duplicate key "
                                 f"{name!r} (first on line {seen[name]}); YAML would keep only "
                                 "the last one"])
            seen[name] = line
            key = (*path, name)
            _line_map(value_node, key, out, where)
            out[key] = line  # a key points at its own line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, (*path, index), out, where)


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise SpecError([f"{path}: is a folder, not a YAML file"])
    if not path.is_file():
        raise SpecError([f"{path}: file not found"])
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SpecError([f"{path}: cannot read the file: {exc.strerror or exc}"]) from None


def _decode(raw: bytes, path: Path) -> str | bytes:
    """The text of ``raw`` (UTF-8), or ``raw`` itself when a BOM says UTF-16/32."""
    if raw.startswith(_WIDE_BOMS):
        return raw  # PyYAML decodes these itself
    nul = raw.find(b"\0", 0, _SNIFF)
    if nul >= 0:
        raise SpecError([f"{path}: not a YAML text file: binary data (a NUL byte at offset "
                         f"{nul})"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start]
        raise SpecError([f"{path}:{line}: not a UTF-8 text: byte 0x{byte:02x} at offset "
                         f"{exc.start} (save the file as UTF-8; Latin-1 and other encodings "
                         "are not read)"]) from None


def _yaml_problem(exc: yaml.YAMLError, text: str | bytes, path: Path) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        # context says what was being read ("while parsing a flow sequence"), problem what
        # went wrong there; the scanner's context ("while scanning ...") says nothing more
        context = exc.context if not str(exc.context).startswith("while scanning") else None
        problem = ", ".join(p for p in (context, exc.problem) if p) or str(exc)
        if "'\\t'" in problem:
            problem += " (YAML indents with spaces, not tabs)"
        return f"{where}: invalid YAML: {one_line(problem)}"
    if isinstance(exc, yaml.reader.ReaderError):
        head = text[: exc.position]
        line = (head.count("\n") if isinstance(head, str) else head.count(b"\n")) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        # PyYAML says encoding 'unicode' for a decoded text with a forbidden character
        what = (f"character U+{code:04X} is not allowed in YAML" if exc.encoding == "unicode"
                else f"byte 0x{code:02x} cannot be decoded as {exc.encoding}")
        return f"{path}:{line}: not a YAML text: {what}"
    return f"{path}: invalid YAML: {one_line(str(exc))}"


def read_yaml(path: Path) -> tuple[Any, dict[YPath, int]]:
    """``yaml.safe_load`` the file; return (data, {path: 1-based line})."""
    text = _decode(_read_bytes(path), path)
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # the reader refuses forbidden characters here
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_problem(exc, text, path)]) from None
    except RecursionError:
        raise SpecError([f"{path}: invalid YAML: nested too deeply"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    lines: dict[YPath, int] = {}
    if node is not None:
        try:
            _line_map(node, (), lines, str(path))
        except RecursionError:
            raise SpecError([f"{path}: invalid YAML: nested too deeply"]) from None
    return data, lines


def field_name(path: YPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"
