"""Layer-name patterns of a step's targets: one definition (unified.spec.names) that the torch,
onnxruntime and TF-MOT backends all select layers with."""

from __future__ import annotations

from pathlib import Path

import pytest

from unified.load.scenario_file import load_scenario
from unified.spec.errors import SpecError
from unified.spec.names import matches_any, name_matches
from unified.spec.steps import OpType, Targets


@pytest.mark.parametrize(("name", "pattern", "expected"), [
    ("features.0.0", "features.*", True),
    ("features.0.0", "features.?.0", True),
    ("classifier", "features.*", False),
    ("Features.0", "features.*", False),  # case matters: module names are identifiers
    ("layer1.0.conv1", "re:layer\\d\\.\\d\\.conv\\d", True),
    ("layer1.0.conv1.extra", "re:layer\\d\\.\\d\\.conv\\d", False),  # a full match, not search
    ("xlayer1.0.conv1", "re:layer.*", False),
    ("fc", "re:fc|classifier", True),
])
def test_globs_and_full_regex_matches(name: str, pattern: str, expected: bool) -> None:
    assert name_matches(name, pattern) is expected


def test_matches_any_needs_one_pattern() -> None:
    assert matches_any("fc", ["conv*", "fc"])
    assert not matches_any("fc", [])


def test_targets_select_by_op_type_then_include_then_exclude() -> None:
    targets = Targets(op_types=(OpType.conv,), include=("features.*",),
                      exclude=("re:features\\.0\\..*",))
    assert targets.selects(OpType.conv, "features.3.0")
    assert not targets.selects(OpType.conv, "features.0.0")  # excluded
    assert not targets.selects(OpType.conv, "classifier")  # not included
    assert not targets.selects(OpType.linear, "features.3.0")  # other op type
    assert not targets.selects(None, "features.3.0")  # none of the unified op types
    assert Targets().selects(OpType.depthwise, "anything")


def test_a_regex_that_does_not_compile_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: t\nmodel: {source: 'builtin:convnet', input_shape: [1, 28, 28]}\n"
                    "backends: [pytorch]\nrecipes:\n  p:\n"
                    "    - prune: {sparsity: 0.5, targets: {exclude: ['re:features[']}}\n")
    with pytest.raises(SpecError) as info:
        load_scenario(path)
    (line,) = info.value.lines()
    assert line.startswith(f"{path}:6: recipes.p[0].prune.targets")
    assert "'re:features[' is not a valid regular expression" in line
