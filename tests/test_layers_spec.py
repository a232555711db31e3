"""Target resolution (unified.spec.layers): every backend gets the same layers for a step, with
the documented defaults. No toolkit needed: the inventory is written out by hand."""

from __future__ import annotations

from typing import Any

import pytest

from unified.spec.layers import LayerInfo, load_inventory, resolve_recipe, save_inventory
from unified.spec.steps import OpType, Recipe

# conv stem, depthwise conv, grouped conv, pointwise conv, classifier (execution order)
INVENTORY = [
    LayerInfo("stem", OpType.conv, (8, 1, 3, 3)),
    LayerInfo("dw", OpType.depthwise, (8, 1, 3, 3), groups=8),
    LayerInfo("grouped", OpType.conv, (16, 4, 3, 3), groups=2),
    LayerInfo("pw", OpType.conv, (16, 16, 1, 1)),
    LayerInfo("head", OpType.linear, (10, 16)),
]


def resolve(*steps: dict[str, Any]) -> list[Any]:
    return resolve_recipe(Recipe.model_validate(list(steps)).steps, INVENTORY)


def test_channel_pruning_never_prunes_the_output_layer() -> None:
    (targets,) = resolve({"prune": {"sparsity": 0.5, "structure": "channel"}})
    assert targets.layers == ("stem", "dw", "grouped", "pw")
    assert "head" in targets.left_out and "classes" in targets.left_out["head"]


def test_unstructured_pruning_and_quantization_keep_the_output_layer() -> None:
    prune, quantize = resolve({"prune": {"sparsity": 0.5}}, {"quantize": {"method": "static"}})
    assert prune.layers == quantize.layers == tuple(layer.name for layer in INVENTORY)
    assert prune.left_out == quantize.left_out == {}


def test_input_channel_pruning_leaves_out_input_depthwise_and_grouped() -> None:
    (targets,) = resolve({"prune": {"sparsity": 0.5, "structure": "input_channel",
                                    "targets": {"op_types": ["conv", "depthwise", "linear"]}}})
    assert targets.layers == ("pw", "head")
    assert set(targets.left_out) == {"stem", "dw", "grouped"}
    assert "depthwise" in targets.left_out["dw"] and "group" in targets.left_out["grouped"]


def test_an_include_naming_the_output_layer_exactly_overrides_the_default() -> None:
    (named,) = resolve({"prune": {"sparsity": 0.5, "structure": "channel",
                                  "targets": {"include": ["head"]}}})
    assert named.layers == ("head",) and named.left_out == {}
    (wildcard,) = resolve({"prune": {"sparsity": 0.5, "structure": "channel",
                                     "targets": {"include": ["he*"]}}})
    assert wildcard.layers == () and "head" in wildcard.left_out


def test_grouped_convs_are_convs_and_op_types_filter() -> None:
    (targets,) = resolve({"prune": {"sparsity": 0.5, "targets": {"op_types": ["conv"]}}})
    assert targets.layers == ("stem", "grouped", "pw")  # grouped is a conv, dw is not


def test_excluded_layers_are_not_listed_as_left_out_by_default() -> None:
    (targets,) = resolve({"prune": {"sparsity": 0.5, "structure": "channel",
                                    "targets": {"exclude": ["head", "stem"]}}})
    assert targets.layers == ("dw", "grouped", "pw")
    assert targets.left_out == {}  # the user's exclude, not a default, left them out


@pytest.mark.parametrize("step", [{"finetune": {"epochs": 1}},
                                  {"distill": {"student": "builtin:convnet-thin"}}])
def test_training_steps_have_no_targets(step: dict[str, Any]) -> None:
    assert resolve(step) == [None]


def test_inventory_round_trips(tmp_path: Any) -> None:
    path = tmp_path / "layers.json"
    save_inventory(path, INVENTORY)
    assert load_inventory(path) == INVENTORY
