"""Property: whatever one mutation does to a valid scenario file, ``squeezelab validate``
exits 0, or exits 2 with exactly one line on stderr; never a traceback, never exit 1.

Mutations: a key dropped or renamed, a value replaced (wrong type, out-of-range number,
unicode, a name from the vocabulary), the text cut short, garbage bytes inserted, another
encoding. The CLI's ``main()`` runs in this process, so hundreds of examples take seconds.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unified.cli import main

# at least 500 in the default run; SQUEEZELAB_PROPERTY_EXAMPLES=5000 for a longer search
EXAMPLES = max(500, int(os.environ.get("SQUEEZELAB_PROPERTY_EXAMPLES", "500")))

SMALL = {
    "version": 1,
    "name": "prop",
    "seed": 0,
    "model": {"source": "builtin:convnet-tiny", "weights": "train", "input_shape": [1, 8, 8],
              "num_classes": 10},
    "data": {"source": "digits", "train": 500, "calibration": 32, "test": 100},
    "budget": {"train_epochs": 1, "finetune_epochs": 1, "batch_size": 32, "lr": 0.05,
               "optimizer": "sgd"},
    "evaluate": {"latency": {"warmup": 2, "runs": 5, "threads": 1}, "timeout": 60},
    "backends": ["pytorch", "onnxruntime"],
    "recipes": {
        "fp32": [],
        "int8": [{"quantize": {"method": "static", "weights": 8, "activations": 8,
                               "granularity": "per_channel"}}],
        "prune": [{"prune": {"sparsity": 0.5, "scope": "global", "criterion": "l1",
                             "targets": {"op_types": ["conv", "linear"],
                                         "exclude": ["classifier"]},
                             "schedule": {"initial_sparsity": 0.1, "end_epoch": 3}}},
                  {"finetune": {"epochs": 1}}],
        "palette": [{"cluster": {"bits": 4}}],
        "kd": [{"distill": {"student": "builtin:convnet-tiny", "temperature": 4,
                            "alpha": 0.7, "epochs": 1}}],
    },
    "select": {"max_accuracy_drop": 0.02, "minimize": ["size", "latency"]},
    "regress": {"tolerance": {"accuracy": 0.01, "latency": 0.5}},
}
MODELS = {
    "name": "prop-models",
    "models": {
        "a": {"source": "builtin:convnet-tiny", "input_shape": [1, 8, 8], "recipes": ["fp32"]},
        "b": {"source": "builtin:simplenet-mnist", "weights": "random",
              "input_shape": [1, 28, 28], "data": {"source": "synthetic", "train": 16,
                                                   "calibration": 8, "test": 8}},
    },
    "data": {"source": "mnist", "train": 1000, "calibration": 64, "test": 200},
    "backends": ["onnxruntime"],
    "recipes": {"fp32": [], "dyn": [{"quantize": {"method": "dynamic"}}]},
}
# names a user might write: valid ones and near misses, so mutations also reach deep checks
VOCABULARY = [
    "builtin:convnet", "builtin:convnett", "torchvision:resnet18", "torchvision:resnet19",
    "python:no_such_module:build", "mnist", "digits", "synthetic", "imagefolder:nowhere",
    "static", "dynamic", "qat", "per_tensor", "global", "channel", "n:m", "kmeans++",
    "pytorch", "onnxruntime", "nni", "tensorrt", "train", "random", "weights.pt", "size",
    "accuracy", "latency", "agp", "quantize", "prune", "finetune", "é", "模型", "\u202e",
]
VALUES = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2**70, max_value=2**70),
    st.sampled_from([0, -1, 1, 2, 3, 2**32, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(VOCABULARY),
    st.lists(st.integers(min_value=-3, max_value=300), max_size=1),
)
SEVERAL = st.one_of(
    st.lists(st.integers(min_value=-3, max_value=300), min_size=2, max_size=4),
    st.dictionaries(st.sampled_from(["source", "sparsity", "x", "é"]), st.integers(-2, 9),
                    max_size=2),
)
# Mutations that can make several mistakes at once (a file cut short misses every field
# after the cut; a list or a mapping put in place of a value can hold several wrong items;
# inserted bytes such as "\n  " can re-indent a line into another mapping, which leaves one
# field missing and puts one where it does not belong): each problem is one line. Every
# other mutation is one mistake: exactly one line.
SEVERAL_MISTAKES = ("cut", "several", "bytes")


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


def _typo(word: str, where: int, char: str) -> str:
    where %= len(word) + 1
    return word[:where] + char + word[where + 1:]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """(the kind of mutation, the mutated file's bytes)."""
    base = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from([SMALL, MODELS]))))
    paths = list(_paths(base))
    kind = draw(st.sampled_from(["drop", "rename", "set", "set", "set", "several", "bytes",
                                 "cut", "encoding"]))
    if kind in ("drop", "rename", "set", "several"):
        path = draw(st.sampled_from(paths))
        parent = _parent(base, path)
        if kind == "drop":
            del parent[path[-1]]
        elif kind == "set":
            parent[path[-1]] = draw(VALUES)
        elif kind == "several":
            parent[path[-1]] = draw(SEVERAL)
        elif isinstance(parent, dict):
            new = _typo(str(path[-1]), draw(st.integers(0, 30)),
                        draw(st.sampled_from(["", "x", "_", "e", "é", " "])))
            parent[new] = parent.pop(path[-1])
    text = yaml.safe_dump(base, allow_unicode=True, sort_keys=False).encode()
    if kind == "bytes":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=8)) + text[at:]
    elif kind == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif kind == "encoding":
        codec = draw(st.sampled_from(["latin-1", "utf-16", "utf-16-le", "utf-8-sig", "cp1252"]))
        text = text.decode().replace("prop", "prop-é").encode(codec, errors="replace")
    return kind, text


def validate(path: Path) -> tuple[int, str]:
    err = io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main(["validate", str(path)])
        except SystemExit as exc:
            code = exc.code
    return (code if isinstance(code, int) else 1), err.getvalue()


def test_the_unmutated_scenarios_are_valid(tmp_path: Path) -> None:
    for index, doc in enumerate((SMALL, MODELS)):
        path = tmp_path / f"s{index}.yaml"
        path.write_text(yaml.safe_dump(doc))
        assert validate(path) == (0, "")


# derandomize: the same 500 examples in every run, so CI never turns red on a new draw
@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutation=mutated())
def test_validate_exits_0_or_2_with_one_line(mutation: tuple[str, bytes]) -> None:
    kind, text = mutation
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scenario.yaml"
        path.write_bytes(text)
        code, err = validate(path)
    assert "Traceback" not in err
    if code == 0:
        assert err == ""
        return
    lines = err.splitlines()
    assert code == 2 and lines, f"exit {code}:\n{err}"
    assert len(lines) == 1 or kind in SEVERAL_MISTAKES, f"{kind}: exit {code}:\n{err}"
    for line in lines:
        assert line.startswith(f"squeezelab: error: {path}"), line
