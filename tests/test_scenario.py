"""Scenario files: valid ones load; invalid ones give one line per problem with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from unified.load.scenario_file import load_scenario
from unified.run.cache import reference_key
from unified.spec.errors import SpecError
from unified.spec.steps import PruneStep, QuantizeStep, Recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_are_valid(path: Path) -> None:
    from unified.load.scenario_file import has_searchable_values, load_search_scenario

    if has_searchable_values(path):  # for squeezelab search
        assert load_search_scenario(path).params
        return
    scenario = load_scenario(path)
    assert scenario.recipes


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


BASE = """\
name: t
model:
  source: builtin:convnet
  input_shape: [1, 28, 28]
backends: [pytorch]
recipes:
"""


def problems(tmp_path: Path, recipes: str, base: str = BASE) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_scenario(write(tmp_path, base + recipes))
    return info.value.lines()


def test_misspelt_step_names_file_line_and_allowed_steps(tmp_path: Path) -> None:
    lines = problems(tmp_path, "  fp32: []\n  q:\n    - quantise: {method: static}\n")
    assert lines == [
        f"{tmp_path / 's.yaml'}:9: recipes.q[0]: unknown step 'quantise' (allowed steps: "
        "binarize, cluster, distill, finetune, prune, quantize); did you mean 'quantize'?"
    ]


def test_bad_enum_lists_allowed_values_and_input(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "  q:\n    - quantize: {method: statik}\n")
    assert line.endswith(":8: recipes.q[0].quantize.method: must be one of 'dynamic', "
                         "'static' or 'qat'. Got 'statik' instead; did you mean 'static'?")


def test_a_value_far_from_every_choice_gets_no_suggestion(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "  q:\n    - quantize: {method: zzz}\n")
    assert "Got 'zzz' instead" in line and "did you mean" not in line


def test_unknown_field_lists_allowed_fields(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "  p:\n    - prune: {sparsity: 0.5, zzz: 3}\n")
    assert "unknown field 'zzz' (allowed: sparsity, structure, scope" in line
    (line,) = problems(tmp_path, "  p:\n    - prune: {sparsity: 0.5, sparsty: 3}\n")
    assert line.endswith("unknown field 'sparsty'; did you mean 'sparsity'?")


def test_a_misspelt_required_field_is_one_line(tmp_path: Path) -> None:
    # pydantic says "sparsity: Field required" AND "amount: extra input": one mistake
    (line,) = problems(tmp_path, "  p:\n    - prune: {amount: 0.5}\n")
    assert line == (f"{tmp_path / 's.yaml'}:8: recipes.p[0].prune.amount: unknown field "
                    "'amount'; did you mean 'sparsity'?")
    text = BASE.replace("recipes:\n", "recipe:\n") + "  fp32: []\n"
    (line,) = problems(tmp_path, "", base=text)
    assert line.endswith(":6: recipe: unknown field 'recipe'; did you mean 'recipes'?")


def test_the_key_problems_of_one_mapping_are_one_line(tmp_path: Path) -> None:
    # two unknown keys, one missing field: no guess which was meant, but one line
    (line,) = problems(tmp_path, "  p:\n    - prune: {foo: 0.5, bar: 1}\n")
    assert line.endswith(":8: recipes.p[0].prune: unknown fields 'foo', 'bar'; required field "
                         "is missing: sparsity (allowed: sparsity, structure, scope, criterion, "
                         "n, m, block, targets, schedule)")
    (line,) = problems(tmp_path, "", base="name: t\nbackends: [pytorch]\n")
    assert line.endswith(":1: (top level): required fields are missing: model, recipes")


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        "  a:\n    - prune: {sparsity: 1.5}\n  b:\n    - quantize: {weights: 9}\n",
    )
    assert len(lines) == 2
    assert ":8: recipes.a[0].prune.sparsity" in lines[0] and "1.5" in lines[0]
    assert ":10: recipes.b[0].quantize.weights" in lines[1]


def test_unknown_backend(tmp_path: Path) -> None:
    text = BASE.replace("[pytorch]", "[pytorch, tensorrt]") + "  fp32: []\n"
    (line,) = problems(tmp_path, "", base=text)
    assert ":5: backends: " in line and "unknown backend 'tensorrt'" in line
    assert "onnxruntime" in line and "did you mean" not in line
    text = BASE.replace("[pytorch]", "[pytorch, onnxrt]") + "  fp32: []\n"
    (line,) = problems(tmp_path, "", base=text)
    assert line.endswith("; did you mean 'onnxruntime'?")


def test_cross_field_checks(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "  p:\n    - prune: {sparsity: 0.5, structure: 'n:m'}\n")
    assert "needs both n and m" in line
    (line,) = problems(tmp_path, "  c:\n    - cluster: {}\n")
    assert "exactly one of clusters or bits" in line


def test_synthetic_data_cannot_train(tmp_path: Path) -> None:
    text = BASE.replace("backends", "data: {source: synthetic}\nbackends") + "  fp32: []\n"
    (line,) = problems(tmp_path, "", base=text)
    assert "weights: train needs labelled data" in line


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "  a: [1, 2\n  b: : :\n")
    assert line.startswith(f"{tmp_path / 's.yaml'}:") and "invalid YAML" in line


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="file not found"):
        load_scenario("/nonexistent/scenario.yaml")


def test_missing_weights_file(tmp_path: Path) -> None:
    text = BASE.replace("  source: builtin:convnet\n",
                        "  source: builtin:convnet\n  weights: nothere.pt\n") + "  fp32: []\n"
    (line,) = problems(tmp_path, "", base=text)
    assert ":4: model.weights: file not found" in line


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "  a: !!python/object/apply:os.system ['echo hacked']\n")
    assert "invalid YAML" in line


def test_steps_are_typed_and_canonical() -> None:
    recipe = Recipe.model_validate([{"prune": {"sparsity": 0.5}}, {"quantize": {}}])
    prune, quant = recipe.steps
    assert isinstance(prune, PruneStep) and isinstance(quant, QuantizeStep)
    assert recipe.canonical()[1]["quantize"]["method"] == "static"
    # defaults written out or not, the cache key is the same
    explicit = Recipe.model_validate(
        [{"prune": {"sparsity": 0.5, "scope": "local"}}, {"quantize": {"method": "static"}}])
    assert recipe.digest() == explicit.digest()


def test_several_models_each_with_own_data(tmp_path: Path) -> None:
    path = write(tmp_path, """\
name: t
models:
  small: {source: builtin:convnet-tiny, input_shape: [1, 8, 8], data: {source: digits,
          train: 500, calibration: 32, test: 100}}
  big: {source: "torchvision:resnet18", weights: random, input_shape: [3, 64, 64]}
data: {source: synthetic, train: 10, calibration: 4, test: 8}
backends: [onnxruntime]
recipes:
  fp32: []
""")
    scenario = load_scenario(path)
    small, big = scenario.views()
    assert (small.model.label, small.data.source) == ("small", "digits")
    assert (big.model.label, big.data.source) == ("big", "synthetic")
    assert reference_key(small) != reference_key(big)
    assert not small.models and scenario.model.source == "builtin:convnet-tiny"


def test_model_and_models_together_is_an_error(tmp_path: Path) -> None:
    text = BASE + "  fp32: []\nmodels: {a: {source: builtin:convnet, input_shape: [1, 8, 8]}}\n"
    (line,) = problems(tmp_path, "", base=text)
    assert "either model or models" in line


def test_synthetic_model_cannot_train_names_the_model(tmp_path: Path) -> None:
    path = write(tmp_path, """\
name: t
models:
  big: {source: builtin:convnet, input_shape: [1, 8, 8], data: {source: synthetic}}
backends: [onnxruntime]
recipes:
  fp32: []
""")
    with pytest.raises(SpecError, match="model 'big': weights: train needs labelled data"):
        load_scenario(path)


def test_a_model_may_run_only_some_recipes(tmp_path: Path) -> None:
    path = write(tmp_path, """\
name: t
models:
  a: {source: builtin:convnet-tiny, input_shape: [1, 8, 8], recipes: [fp32]}
  b: {source: builtin:convnet-tiny, input_shape: [1, 8, 8]}
backends: [onnxruntime]
recipes:
  fp32: []
  int8: [{quantize: {}}]
""")
    a, b = load_scenario(path).views()
    assert list(a.recipes) == ["fp32"] and list(b.recipes) == ["fp32", "int8"]
    bad = write(tmp_path, path.read_text().replace("recipes: [fp32]", "recipes: [nope]"))
    with pytest.raises(SpecError, match="unknown recipe 'nope'"):
        load_scenario(bad)
