"""ONNX node names of the TorchScript exporter, read back as torch module names."""

from __future__ import annotations

__all__ = ["module_name"]


def module_name(node_name: str) -> str:
    """The torch module an ONNX node came from, from the TorchScript exporter's scoped name.

    The exporter writes ``/features/features.4/conv1/conv1.0/Conv``: one segment per module
    level, each segment either the child's attribute name (``conv1``) or that name prefixed
    by its parent's last name (``conv1.0`` under ``conv1``, ``features.0.0`` under
    ``features.0``). Returns "" for the root module or an unscoped name.
    """
    if not node_name.startswith("/"):
        return ""
    segments = node_name.strip("/").split("/")[:-1]  # the last segment is the op itself
    parts: list[str] = []
    for segment in segments:
        pieces = segment.split(".")
        for k in range(len(parts)):  # longest suffix of the current path the segment repeats
            prefix = parts[k:]
            if pieces[: len(prefix)] == prefix and len(pieces) > len(prefix):
                parts = parts[:k] + pieces
                break
        else:
            parts = parts + pieces
    return ".".join(parts)
