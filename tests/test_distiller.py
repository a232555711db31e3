"""Reading real Distiller schedules (tests/fixtures/distiller) and the format's edges."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from unified.distiller.quant import _allowed_bits
from unified.distiller.schedule import (
    DistillerRecipe,
    bind_to_model,
    load_distiller_schedule,
    match_weight_names,
    render_import,
    to_yaml_recipe,
)
from unified.spec.errors import SpecError
from unified.spec.names import matches_any, name_matches
from unified.spec.steps import (
    Granularity,
    PruneCriterion,
    PruneStep,
    PruneStructure,
    QuantAlgorithm,
    QuantizeStep,
    QuantMethod,
    Recipe,
    ScheduleCurve,
)

SCHEDULES = Path(__file__).parent / "fixtures" / "distiller"
DISTILLER_FILES = [
    "mobilenet.imagenet.schedule_agp.yaml",
    "resnet18.schedule_agp.yaml",
    "simplenet_mnist_pruning.yaml",
    "quant_aware_train_linear_quant.yaml",
    "preact_resnet_cifar_dorefa.yaml",
    "resnet18_imagenet_post_train.yaml",
]


@pytest.fixture
def schedules() -> Path:
    return SCHEDULES


def _load(schedules: Path, name: str) -> DistillerRecipe:
    return load_distiller_schedule(schedules / name)


def _write(tmp_path: Path, text: str, name: str = "schedule.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _prune(step: object) -> PruneStep:
    assert isinstance(step, PruneStep)
    return step


def _quant(step: object) -> QuantizeStep:
    assert isinstance(step, QuantizeStep)
    return step


# --- the six real files --------------------------------------------------------------------


@pytest.mark.parametrize("name", DISTILLER_FILES)
def test_distiller_file_loads_and_round_trips(schedules: Path, name: str) -> None:
    recipe = _load(schedules, name)
    assert recipe.steps
    assert len(recipe.step_weights) == len(recipe.steps)
    as_yaml = to_yaml_recipe(recipe)
    assert [next(iter(entry)) for entry in as_yaml] == [s.kind for s in recipe.steps]
    assert Recipe.model_validate(as_yaml).steps == recipe.steps == recipe.to_recipe().steps
    # the CLI text is valid YAML holding the same recipe
    assert yaml.safe_load(render_import(recipe)) == as_yaml


def test_mobilenet_agp(schedules: Path) -> None:
    recipe = _load(schedules, "mobilenet.imagenet.schedule_agp.yaml")
    conv, fc = (_prune(s) for s in recipe.steps)
    for step, final in ((conv, 0.50), (fc, 0.60)):
        assert step.sparsity == final
        assert step.structure is PruneStructure.unstructured
        assert step.criterion is PruneCriterion.l1
        assert step.schedule is not None
        assert step.schedule.curve is ScheduleCurve.agp
        assert step.schedule.initial_sparsity == 0.15
        assert (step.schedule.start_epoch, step.schedule.end_epoch) == (0, 20)
        assert step.schedule.frequency == 2
    assert conv.targets.include[0] == "model.4.3"
    assert len(conv.targets.include) == 10
    assert fc.targets.include == ("fc",)
    assert recipe.weight_names[0] == "module.model.4.3.weight"
    assert recipe.weight_names[-1] == "module.fc.weight"
    (lr,) = recipe.lr_schedulers
    assert (lr.name, lr.torch_class) == ("pruning_lr", "torch.optim.lr_scheduler.StepLR")
    assert lr.args == {"step_size": 30, "gamma": 0.1}
    assert lr.epochs == list(range(100))
    assert recipe.unsupported == [] and recipe.thinning == []


def test_resnet18_agp_staggered_starts(schedules: Path) -> None:
    recipe = _load(schedules, "resnet18.schedule_agp.yaml")
    steps = [_prune(s) for s in recipe.steps]
    assert [s.sparsity for s in steps] == [0.60, 0.67, 0.76]
    assert [s.schedule.start_epoch for s in steps if s.schedule] == [0, 4, 4]
    assert {s.schedule.end_epoch for s in steps if s.schedule} == {16}
    assert "layer4.0.downsample.0" in steps[0].targets.include
    assert len(recipe.weight_names) == 18
    (lr,) = recipe.lr_schedulers
    assert lr.class_name == "ExponentialLR" and lr.args == {"gamma": 0.9}
    assert lr.epochs == list(range(13, 100))


def test_simplenet_structured_and_thinning(schedules: Path) -> None:
    recipe = _load(schedules, "simplenet_mnist_pruning.yaml")
    one_shot, filters_agp, fc_agp = (_prune(s) for s in recipe.steps)
    assert one_shot.structure is PruneStructure.channel and one_shot.sparsity == 0.1
    assert one_shot.schedule is not None
    assert one_shot.schedule.curve is ScheduleCurve.constant  # epochs [0, 1]
    assert (one_shot.schedule.start_epoch, one_shot.schedule.end_epoch) == (0, 2)
    assert one_shot.targets.include == ("conv1",)
    assert filters_agp.structure is PruneStructure.channel
    assert filters_agp.schedule is not None and filters_agp.schedule.curve is ScheduleCurve.agp
    assert (filters_agp.schedule.initial_sparsity, filters_agp.sparsity) == (0.05, 0.20)
    assert fc_agp.structure is PruneStructure.unstructured
    assert (fc_agp.schedule and fc_agp.schedule.initial_sparsity, fc_agp.sparsity) == (0.02, 0.15)
    assert recipe.thinning == ["filters"]
    assert any("thinning requested" in n and "net_thinner" in n for n in recipe.notes)


def test_quant_aware_training(schedules: Path) -> None:
    recipe = _load(schedules, "quant_aware_train_linear_quant.yaml")
    (step,) = (_quant(s) for s in recipe.steps)
    assert step.method is QuantMethod.qat and step.algorithm is QuantAlgorithm.plain
    assert (step.weights, step.activations) == (8, 8)
    assert step.symmetric is False  # ASYMMETRIC_UNSIGNED
    assert step.granularity is Granularity.per_channel  # per_channel_wts: True
    assert step.epochs is None  # the budget decides; Distiller's 0..300 is a placeholder
    assert any("0..299" in n for n in recipe.notes)


def test_dorefa(schedules: Path) -> None:
    recipe = _load(schedules, "preact_resnet_cifar_dorefa.yaml")
    (step,) = (_quant(s) for s in recipe.steps)
    assert step.method is QuantMethod.qat and step.algorithm is QuantAlgorithm.dorefa
    assert step.activations == 8
    if 3 in _allowed_bits("weights"):
        assert step.weights == 3
    else:  # the spec lacks 3-bit weights: rounded up, and said so
        assert step.weights == 4
        assert any("3 bits" in n and "rounded up to 4" in n for n in recipe.notes)
    # overrides with null bits keep those layers in float
    assert step.targets.exclude == ("conv1", "layer1.0.pre_relu", "final_relu", "fc")
    assert recipe.unsupported == []
    # milestones [80, 120, 160], gammas [0.1, 0.1, 0.2]: one chained MultiStepLR each
    assert [(lr.torch_class, lr.args) for lr in recipe.lr_schedulers] == [
        ("torch.optim.lr_scheduler.MultiStepLR", {"milestones": [80], "gamma": 0.1}),
        ("torch.optim.lr_scheduler.MultiStepLR", {"milestones": [120], "gamma": 0.1}),
        ("torch.optim.lr_scheduler.MultiStepLR", {"milestones": [160], "gamma": 0.2}),
    ]
    assert all(lr.epochs == list(range(161)) for lr in recipe.lr_schedulers)
    assert any("MultiStepMultiGammaLR written as one torch MultiStepLR" in n
               for n in recipe.notes)


def test_multi_gamma_lr_gives_distillers_rates() -> None:
    from unified.torchkit.training import scheduled_learning_rates

    # Distiller: lr = base * prod(gammas of the milestones <= epoch)
    milestones, gammas = [2, 4], [0.1, 0.5]
    chained = [("torch.optim.lr_scheduler.MultiStepLR", {"milestones": [m], "gamma": g},
                range(6)) for m, g in zip(milestones, gammas, strict=True)]
    expected = [math.prod(g for m, g in zip(milestones, gammas, strict=True) if m <= e)
                for e in range(6)]
    assert scheduled_learning_rates(chained, 1.0, 6) == pytest.approx(expected)


def test_post_training_quantization(schedules: Path) -> None:
    recipe = _load(schedules, "resnet18_imagenet_post_train.yaml")
    (step,) = (_quant(s) for s in recipe.steps)
    assert step.method is QuantMethod.static
    expected = 6 if 6 in _allowed_bits("weights") else 8
    assert (step.weights, step.activations) == (expected, expected)
    assert step.symmetric is False and step.granularity is Granularity.per_channel
    assert any("clip_acts=AVG" in n for n in recipe.notes)
    assert recipe.lr_schedulers == [] and recipe.unsupported == []


# --- the format, beyond the six files ------------------------------------------------------


def test_unknown_classes_are_reported_by_name(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        pruners:
          magic:
            class: FancyNewPruner
            whatever: 3
        lr_schedulers:
          warm:
            class: WarmupMagicLR
        regularizers:
          l1:
            class: L1Regularizer
            reg_regims: {module.conv1.weight: 0.001}
        policies:
          - pruner: {instance_name: magic}
            starting_epoch: 0
            ending_epoch: 4
            frequency: 1
          - regularizer: {instance_name: l1}
            epochs: [0]
    """)
    recipe = load_distiller_schedule(path)
    assert recipe.steps == []
    assert any(u.startswith("magic (FancyNewPruner):") and "unknown Distiller class" in u
               for u in recipe.unsupported)
    assert any(u.startswith("warm (WarmupMagicLR):") for u in recipe.unsupported)
    assert any(u.startswith("l1 (L1Regularizer):") and "regularization" in u
               for u in recipe.unsupported)


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "pruners:\n  p1:\n    class: AutomatedGradualPruner\n"
                  "    weights: [module.conv1.weight\n  p2: {}\n")
    with pytest.raises(SpecError) as info:
        load_distiller_schedule(path)
    (problem,) = info.value.problems
    assert re.match(rf"{re.escape(str(path))}:\d+: invalid YAML", problem)


def test_policy_naming_a_missing_pruner(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        version: 1
        pruners:
          p1:
            class: AutomatedGradualPruner
            initial_sparsity: 0.05
            final_sparsity: 0.8
            weights: [module.conv1.weight]
        policies:
          - pruner:
              instance_name: p2
            starting_epoch: 0
            ending_epoch: 4
            frequency: 1
    """)
    with pytest.raises(SpecError) as info:
        load_distiller_schedule(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:10: policies[0].pruner.instance_name: pruner 'p2'")


def test_every_problem_is_listed_with_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        pruners:
          agp:
            class: AutomatedGradualPruner
            initial_sparsity: 0.05
            final_sparsity: 0.8
            weight: [module.conv1.weight]
          agp2:
            class: AutomatedGradualPruner
            initial_sparsity: 0.5
            final_sparsity: 0.4
            weights: [module.conv2.weight]
          listed:
            class: AutomatedGradualPruner
            initial_sparsity: 0.1
            final_sparsity: 0.4
            weights: [module.conv3.weight]
        quantizers:
          a: {class: DorefaQuantizer}
          b: {class: PACTQuantizer}
        policies:
          - pruner: {instance_name: agp2}
            starting_epoch: 0
            ending_epoch: 4
            frequency: 1
          - pruner: {instance_name: listed}
            epochs: [0, 1, 2]
          - pruner: {instance_name: listed}
            starting_epoch: 0
            ending_epoch: 1
            frequency: 1
          - lr_scheduler: {instance_name: missing}
            epochs: [0]
    """)
    with pytest.raises(SpecError) as info:
        load_distiller_schedule(path)
    text = "\n".join(info.value.problems)
    # a misspelt required argument is one problem, not "does not accept" + "needs"
    assert (f"{path}:6: pruners.agp.weight: AutomatedGradualPruner does not accept the "
            "argument 'weight'; did you mean 'weights'?") in text
    assert "needs the argument 'weights'" not in text
    assert f"{path}:10: pruners.agp2.final_sparsity: must exceed initial_sparsity" in text
    assert f"{path}:17: quantizers: Distiller supports one quantizer" in text
    assert f"{path}:26: policies[1].epochs: AGP pruner 'listed' needs starting_epoch" in text
    assert f"{path}:27: policies[2]: AGP span" in text
    assert f"{path}:31: policies[3].lr_scheduler.instance_name: lr_scheduler 'missing'" in text


def test_policy_timing_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        pruners:
          f: {class: L1RankedStructureParameterPruner, group_type: Filters,
              desired_sparsity: 0.3, weights: [module.conv1.weight]}
        policies:
          - pruner: {instance_name: f}
            starting_epoch: 3
            ending_epoch: 3
            frequency: 1
          - pruner: {instance_name: f}
            starting_epoch: 0
            ending_epoch: 4
          - pruner: {instance_name: f}
            starting_epoch: 0
            ending_epoch: 4
            frequency: 5
    """)
    with pytest.raises(SpecError) as info:
        load_distiller_schedule(path)
    text = "\n".join(info.value.problems)
    assert f"{path}:7: policies[0].ending_epoch: must be greater than starting_epoch" in text
    assert f"{path}:9: policies[1]: a policy needs 'epochs: [...]'" in text
    assert f"{path}:15: policies[2].frequency: must be between 1 and" in text


def test_one_shot_epochs_lists(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        pruners:
          f:
            class: L2RankedStructureParameterPruner
            group_type: Channels
            desired_sparsity: 0.25
            weights: module.conv2.weight
        policies:
          - pruner: {instance_name: f}
            epochs: [3, 6, 9]
          - pruner: {instance_name: f}
            epochs: [0, 1, 5]
    """)
    recipe = load_distiller_schedule(path)
    regular, irregular = (_prune(s) for s in recipe.steps)
    assert regular.criterion is PruneCriterion.l2
    assert regular.structure is PruneStructure.input_channel  # Distiller's Channels: weight[:, c]
    assert regular.schedule is not None and irregular.schedule is not None
    assert (regular.schedule.start_epoch, regular.schedule.end_epoch) == (3, 10)
    assert regular.schedule.frequency == 3
    assert (irregular.schedule.start_epoch, irregular.schedule.end_epoch) == (0, 6)
    assert any("irregular epochs [0, 1, 5]" in n for n in recipe.notes)
    assert regular.targets.include == ("conv2",)  # a lone string is a one-name list


def test_sensitivity_and_level_pruners(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        pruners:
          sens:
            class: SensitivityPruner
            sensitivities:
              features.module.0.weight: 0.25
              classifier.1.weight: 0.875
              classifier.4.weight: 0.875
          levels:
            class: SparsityLevelParameterPruner
            levels: {module.fc.weight: 0.5, '*': 0.3, module.conv1.weight: 0}
        policies:
          - pruner: {instance_name: sens}
            starting_epoch: 0
            ending_epoch: 38
            frequency: 2
          - pruner: {instance_name: levels}
            epochs: [0]
    """)
    recipe = load_distiller_schedule(path)
    s1, s2, fc, rest = (_prune(s) for s in recipe.steps)
    assert s1.sparsity == pytest.approx(math.erf(0.25 / math.sqrt(2)), abs=1e-4)
    assert s1.targets.include == ("features.0",)
    assert s2.targets.include == ("classifier.1", "classifier.4")
    assert s1.schedule is not None and s1.schedule.curve is ScheduleCurve.constant
    assert any(n.startswith("sens (SensitivityPruner): approximated") for n in recipe.notes)
    assert (fc.sparsity, fc.targets.include) == (0.5, ("fc",))
    assert rest.sparsity == 0.3 and rest.targets.include == ()
    assert rest.targets.exclude == ("fc", "conv1")  # named tensors keep their own level


def test_unsupported_pruners_and_policy_args(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        pruners:
          surgery:
            class: SplicingPruner
            low_thresh_mult: 0.9
            hi_thresh_mult: 1.1
            sensitivities: {module.conv1.weight: 0.05}
          drop:
            class: L1RankedStructureParameterPruner_AGP
            initial_sparsity: 0.05
            final_sparsity: 0.5
            group_type: Filters
            weights: [module.conv1.weight]
          unused:
            class: AutomatedGradualPruner
            initial_sparsity: 0.05
            final_sparsity: 0.5
            weights: [module.conv9.weight]
        policies:
          - pruner: {instance_name: surgery, args: {keep_mask: true}}
            starting_epoch: 0
            ending_epoch: 10
            frequency: 1
          - pruner:
              instance_name: drop
              args: {discard_masks_at_minibatch_end: true, mini_batch_pruning_frequency: 16}
            starting_epoch: 0
            ending_epoch: 10
            frequency: 1
    """)
    recipe = load_distiller_schedule(path)
    assert recipe.steps == []
    assert any(u.startswith("surgery (SplicingPruner):") for u in recipe.unsupported)
    assert any(u.startswith("drop (L1RankedStructureParameterPruner_AGP):") and "discards" in u
               for u in recipe.unsupported)
    assert any(n.startswith("unused (AutomatedGradualPruner): defined but no policy")
               for n in recipe.notes)
    assert recipe.weight_names == []


def _distiller_owner(name: str, keys: list[str]) -> str | None:
    """Distiller's override lookup: literal key first, then the first ^key$ regex."""
    if name in keys:
        return name
    return next((k for k in keys if re.match(f"^{k}$", name)), None)


def test_overrides_first_match_wins(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        quantizers:
          ptq:
            class: PostTrainLinearQuantizer
            bits_activations: null
            bits_parameters: null
            overrides:
              layer.*conv.*: {bits_weights: 4, bits_activations: null}
              layer.*relu.*: {bits_activations: 4}
              .*downsample\\.0.*: {bits_weights: 4, bits_activations: null}
              layer4.1.conv2: {bits_weights: null, bits_activations: null}
              .*: {bits_weights: 8}
    """)
    recipe = load_distiller_schedule(path)
    (step,) = (_quant(s) for s in recipe.steps)
    assert step.weights == 4 and step.activations is None
    keys = ["layer.*conv.*", "layer.*relu.*", r".*downsample\.0.*", "layer4.1.conv2", ".*"]
    quantized = {"layer.*conv.*", r".*downsample\.0.*", ".*"}
    names = ["conv1", "layer1.0.conv1", "layer4.1.conv2", "layer4.1.conv1", "layer2.0.relu",
             "layer2.0.downsample.0", "fc", "layer3.0.downsample.0.conv"]
    for name in names:
        owner = _distiller_owner(name, keys)
        in_step = any(name_matches(name, p) for p in step.targets.include) and not any(
            name_matches(name, p) for p in step.targets.exclude)
        assert in_step == (owner in quantized), name
    assert any("'.*'" in n and "bits_weights=8" in n for n in recipe.notes)


def test_lr_schedulers(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        lr_schedulers:
          poly: {class: PolynomialLR, T_max: 90, power: 2}
          multi: {class: MultiStepLR, milestones: [30, 60], gamma: 0.1}
          lam: {class: LambdaLR, lr_lambda: 'lambda e: 0.9 ** e'}
        policies:
          - lr_scheduler: {instance_name: poly}
            starting_epoch: 0
            ending_epoch: 3
            frequency: 1
    """)
    recipe = load_distiller_schedule(path)
    poly, multi = recipe.lr_schedulers
    assert poly.torch_class == "torch.optim.lr_scheduler.PolynomialLR"
    assert poly.args == {"total_iters": 90, "power": 2} and poly.epochs == [0, 1, 2]
    assert multi.args == {"milestones": [30, 60], "gamma": 0.1} and multi.epochs == []
    assert any(u.startswith("lam (LambdaLR):") for u in recipe.unsupported)


def test_match_weight_names() -> None:
    params = ["conv1.weight", "conv1.bias", "features.0.weight", "layer1.0.conv1.weight",
              "layer1.1.conv1.weight", "fc.weight"]
    names = ["module.conv1.weight", "features.module.0.weight", "fc.weight",
             r"module\.layer1\.\d\.conv1\.weight", "module.layer9.conv.weight", "*",
             "module.nothing.weight"]
    mapping, unmatched = match_weight_names(names, params)
    assert mapping["module.conv1.weight"] == ["conv1.weight"]
    assert mapping["features.module.0.weight"] == ["features.0.weight"]
    assert mapping["fc.weight"] == ["fc.weight"]
    assert mapping[r"module\.layer1\.\d\.conv1\.weight"] == [
        "layer1.0.conv1.weight", "layer1.1.conv1.weight"]
    assert unmatched == ["module.layer9.conv.weight", "module.nothing.weight"]


def test_bind_to_model(schedules: Path) -> None:
    recipe = _load(schedules, "simplenet_mnist_pruning.yaml")
    params = ["conv1.weight", "conv1.bias", "conv2.weight", "fc1.weight", "fc2.weight"]
    bound = bind_to_model(recipe, params)
    assert [_prune(s).targets.include for s in bound.steps] == [("conv1",), ("conv2",), ("fc2",)]
    with pytest.raises(SpecError) as info:
        bind_to_model(recipe, ["features.0.weight", "classifier.weight"])
    (problem,) = info.value.problems  # ONE error listing every unmatched name
    for name in recipe.weight_names:
        assert name in problem
    assert problem.startswith(f"{recipe.source}: 3 Distiller weight name(s) match no parameter")


def test_bind_reports_weights_of_layers_no_backend_compresses(tmp_path: Path) -> None:
    import torch

    from unified.distiller.schedule import module_kinds

    class Tagger(torch.nn.Module):  # embedding -> depthwise conv -> norm -> linear
        def __init__(self) -> None:
            super().__init__()
            self.encoder = torch.nn.Embedding(50, 8)
            self.dw = torch.nn.Conv1d(8, 8, 3, groups=8)
            self.norm = torch.nn.BatchNorm1d(8)
            self.fc = torch.nn.Linear(8, 4)

    path = _write(tmp_path, """
        pruners:
          all:
            class: AutomatedGradualPruner
            initial_sparsity: 0.1
            final_sparsity: 0.5
            weights: [module.encoder.weight, module.fc.weight, module.norm.weight]
          lookup:
            class: SensitivityPruner
            sensitivities: {module.encoder.weight: 0.5}
        policies:
          - {pruner: {instance_name: all}, starting_epoch: 0, ending_epoch: 3, frequency: 1}
          - {pruner: {instance_name: lookup}, epochs: [0]}
    """)
    model = Tagger()
    params = [name for name, _ in model.named_parameters()]
    bound = bind_to_model(load_distiller_schedule(path), params, module_kinds(model))
    (step,) = (_prune(s) for s in bound.steps)  # the embedding-only step is dropped
    assert step.targets.include == ("fc",)
    assert [t.value for t in step.targets.op_types] == ["linear"]
    reported = [u for u in bound.unsupported if "no backend compresses" in u]
    assert reported == [
        "prune step 1 on encoder (Embedding), norm (BatchNorm1d): not a conv, depthwise conv "
        "or linear layer; no backend compresses its weight",
        "prune step 2 on encoder (Embedding): not a conv, depthwise conv or linear layer; "
        "no backend compresses its weight",
    ]


def test_overrides_literal_name_beats_earlier_regex(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        quantizers:
          qat:
            class: QuantAwareTrainRangeLinearQuantizer
            bits_activations: 8
            bits_weights: 8
            overrides:
              .*conv.*: {bits_weights: null, bits_activations: null}
              layer1.conv: {bits_weights: 8}
    """)
    (step,) = (_quant(s) for s in load_distiller_schedule(path).steps)
    keys = [".*conv.*", "layer1.conv"]
    for name in ("layer1.conv", "layer2.conv", "fc", "conv1"):
        owner = _distiller_owner(name, keys)
        excluded = any(name_matches(name, p) for p in step.targets.exclude)
        assert excluded == (owner == ".*conv.*"), name


# --- more real Distiller files (tests/fixtures/distiller, IntelLabs/distiller @ d859fc8) -----

FIXTURES = Path(__file__).parent / "fixtures" / "distiller"
FIXTURE_SCHEDULES = [
    "resnet20_filters.bn_fold.schedule_agp.yaml",
    "resnet50.schedule_agp.1x1x8-blocks.yaml",
    "alexnet.schedule_sensitivity_2D-reg.yaml",
    "resnet18_imagenet_post_train_lapq.yaml",
    "word_lang_model.schedule_agp.yaml",
    "vgg19.schedule_filter_rank.yaml",
]


@pytest.mark.parametrize("name", FIXTURE_SCHEDULES)
def test_fixture_file_round_trips(name: str) -> None:
    recipe = load_distiller_schedule(FIXTURES / name)
    assert recipe.steps and len(recipe.step_weights) == len(recipe.steps)
    assert recipe.to_recipe().steps == recipe.steps
    assert yaml.safe_load(render_import(recipe)) == to_yaml_recipe(recipe)


def test_real_structured_agp_with_policy_args_rows_and_thinning() -> None:
    recipe = load_distiller_schedule(FIXTURES / "resnet20_filters.bn_fold.schedule_agp.yaml")
    filters, fine, fc = (_prune(s) for s in recipe.steps)  # in policy order
    assert (filters.structure, filters.sparsity) == (PruneStructure.channel, 0.5)
    assert filters.targets.include[:3] == ("layer2.0.conv1", "layer2.0.conv2",
                                           "layer2.0.downsample.0")
    assert filters.schedule is not None and filters.schedule.curve is ScheduleCurve.agp
    assert (filters.schedule.initial_sparsity, filters.schedule.start_epoch,
            filters.schedule.end_epoch, filters.schedule.frequency) == (0.1, 0, 30, 2)
    assert fine.structure is PruneStructure.unstructured and fine.sparsity == 0.7
    assert fine.schedule is not None and fine.schedule.start_epoch == 30
    # group_type Rows ranks the classifier's input features (weight[:, c]), as Distiller does
    assert fc.structure is PruneStructure.input_channel and fc.targets.include == ("fc",)
    # policy `args: {fold_batchnorm: True}` is reported, by pruner
    assert any(n.startswith("low_pruner (") and "fold_batchnorm" in n for n in recipe.notes)
    assert any(n.startswith("fine_pruner (") and "fold_batchnorm" in n for n in recipe.notes)
    assert recipe.thinning == ["filters"] and recipe.unsupported == []
    (lr,) = recipe.lr_schedulers
    assert (lr.class_name, lr.args, lr.epochs) == ("StepLR", {"step_size": 50, "gamma": 0.1},
                                                   list(range(400)))


def test_real_block_pruning_and_lone_string_weights() -> None:
    recipe = load_distiller_schedule(FIXTURES / "resnet50.schedule_agp.1x1x8-blocks.yaml")
    blocks, fc = (_prune(s) for s in recipe.steps)
    assert (blocks.structure, blocks.block, blocks.sparsity) == (PruneStructure.block, (1, 8), 0.7)
    assert len(blocks.targets.include) == 16 and blocks.targets.include[-1] == "layer4.2.conv2"
    assert blocks.schedule is not None and blocks.schedule.frequency == 1
    assert fc.targets.include == ("fc",)  # `weights: module.fc.weight`, a lone string
    assert fc.schedule is not None and (fc.schedule.end_epoch, fc.schedule.frequency) == (30, 3)
    assert "module.fc.weight" in recipe.weight_names
    assert any("block_shape [1, 8, 1, 1]" in n for n in recipe.notes)


def test_real_sensitivity_pruning_with_group_lasso_regularizer() -> None:
    recipe = load_distiller_schedule(FIXTURES / "alexnet.schedule_sensitivity_2D-reg.yaml")
    steps = [_prune(s) for s in recipe.steps]
    levels = {s.targets.include: s.sparsity for s in steps}
    assert levels[("features.0",)] == pytest.approx(math.erf(0.25 / math.sqrt(2)), abs=1e-4)
    assert levels[("classifier.1", "classifier.4")] == pytest.approx(
        math.erf(0.875 / math.sqrt(2)), abs=1e-4)  # one step per distinct sensitivity
    assert len(steps) == 7
    for step in steps:  # starting_epoch 0, ending_epoch 38, frequency 2: epochs 0, 2, .., 36
        assert step.schedule is not None and step.schedule.curve is ScheduleCurve.constant
        assert (step.schedule.start_epoch, step.schedule.end_epoch) == (0, 37)
        assert step.schedule.frequency == 2
    (entry,) = recipe.unsupported
    assert entry.startswith("2d_groups_regularizer (GroupLassoRegularizer):")
    assert recipe.weight_names[0] == "features.module.0.weight"


def test_real_post_training_null_defaults_and_regex_overrides() -> None:
    recipe = load_distiller_schedule(FIXTURES / "resnet18_imagenet_post_train_lapq.yaml")
    (step,) = (_quant(s) for s in recipe.steps)
    # bits_parameters / bits_activations null: only the overridden layers are quantized
    assert (step.method, step.weights, step.activations) == (QuantMethod.static, 4, None)
    assert step.symmetric is True  # mode: {activations: ASYMMETRIC_UNSIGNED, weights: SYMMETRIC}
    assert step.granularity is Granularity.per_tensor and step.targets.exclude == ()
    keys = ["layer.*conv.*", "layer.*relu.*", r".*downsample\.0.*", "layer4.1.conv2",
            "layer4.1.relu2"]
    quantized = {"layer.*conv.*", r".*downsample\.0.*"}
    for name in ("conv1", "fc", "layer1.0.conv1", "layer3.1.conv2", "layer4.1.conv2",
                 "layer4.1.conv1", "layer2.0.downsample.0", "layer2.0.relu1"):
        owner = _distiller_owner(name, keys)
        assert matches_any(name, step.targets.include) == (owner in quantized), name
    assert any("mode: weights SYMMETRIC, activations ASYMMETRIC_UNSIGNED" in n
               for n in recipe.notes)


def test_real_rnn_weights_are_reported_not_read_as_layer_weights() -> None:
    recipe = load_distiller_schedule(FIXTURES / "word_lang_model.schedule_agp.yaml")
    (embedding,) = (_prune(s) for s in recipe.steps)
    assert (embedding.sparsity, embedding.targets.include) == (0.9, ("encoder",))
    assert recipe.weight_names == ["encoder.weight"]
    assert [u.split(":")[0] for u in recipe.unsupported] == [
        "l0_rnn_pruner (AutomatedGradualPruner)", "l1_rnn_pruner (AutomatedGradualPruner)"]
    assert "rnn.weight_ih_l0, rnn.weight_hh_l0" in recipe.unsupported[0]


def test_real_epochs_lists_repeated_pruners_and_unstepped_lr() -> None:
    recipe = load_distiller_schedule(FIXTURES / "vgg19.schedule_filter_rank.yaml")
    steps = [_prune(s) for s in recipe.steps]
    assert [(s.schedule.start_epoch, s.schedule.end_epoch) for s in steps if s.schedule] == [
        (0, 1), (1, 2), (4, 5), (5, 6)]
    assert all(s.structure is PruneStructure.channel for s in steps)
    # each pruner runs again after FilterRemover thinned its layers: Distiller ranks the
    # remaining filters, 10% of 90% more, 19% of the original in all
    assert [s.sparsity for s in steps] == [0.1, 0.1, 0.19, 0.19]
    assert sum("runs again after thinning" in n and "0.19 of the original" in n
               for n in recipe.notes) == 2
    assert all(s.schedule and s.schedule.curve is ScheduleCurve.constant for s in steps)
    assert steps[0].targets.include == steps[2].targets.include  # vgg_manual, twice
    assert steps[0].targets.include[0] == "features.2"  # features.module.2.weight
    assert recipe.thinning == ["filters"]
    assert any("epochs [0, 1, 4, 5]" in n for n in recipe.notes)
    (lr,) = recipe.lr_schedulers
    assert lr.epochs == [] and any(n.startswith("pruning_lr (StepLR): defined but no policy")
                                   for n in recipe.notes)


def test_real_quantization_stats_file_is_not_a_schedule() -> None:
    path = FIXTURES / "quantization_stats_no_split.yaml"
    with pytest.raises(SpecError) as info:
        load_distiller_schedule(path)
    (problem,) = info.value.problems  # one line, naming the file and what it is
    assert "\n" not in problem
    assert problem.startswith(f"{path}:3: ")
    assert "not a Distiller compression schedule" in problem
    assert "mf_user_embed" in problem and "quantization statistics" in problem


# --- the format: forms real files use beyond the fixtures ----------------------------------


def test_not_a_schedule_amc_config_and_overrides_file(tmp_path: Path) -> None:
    amc = _write(tmp_path, "network:\n  resnet20_cifar: [module.layer1.0.conv2]\n", "amc.yaml")
    greedy = _write(tmp_path, "conv1: {bits_weights: 8, bits_activations: 8}\n"
                    "fc: {bits_weights: 8, bits_activations: 8}\n", "greedy.yaml")
    for path, what in ((amc, "AMC"), (greedy, "per-layer quantizer overrides")):
        with pytest.raises(SpecError) as info:
            load_distiller_schedule(path)
        (problem,) = info.value.problems
        assert problem.startswith(str(path)) and what in problem


def test_overrides_supply_the_bits_when_the_defaults_are_null(tmp_path: Path) -> None:
    # the form ptq_greedy_search writes: null defaults, every layer's bits in an override
    path = _write(tmp_path, """
        quantizers:
          post_train_quantizer:
            class: PostTrainLinearQuantizer
            bits_activations: null
            bits_parameters: null
            mode: ASYMMETRIC_SIGNED
            overrides:
              conv1: {bits_weights: 8, bits_activations: 8, clip_acts: GAUSS}
              layer1.0.relu1: {bits_weights: 8, bits_activations: 8, fpq_module: 32, fake: true}
              fc: {bits_weights: 8, bits_activations: 8}
    """)
    recipe = load_distiller_schedule(path)
    (step,) = (_quant(s) for s in recipe.steps)
    assert (step.weights, step.activations) == (8, 8)  # not float activations
    assert step.targets.include == ("conv1", "layer1.0.relu1", "fc")
    assert not any("cannot be expressed" in n for n in recipe.notes)
    assert any("'conv1': clip_acts='GAUSS' not expressible" in n for n in recipe.notes)


def test_pruner_argument_forms_distiller_accepts(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        pruners:
          mapped:
            class: AutomatedGradualPruner
            initial_sparsity: 0.05
            final_sparsity: 0.5
            weights: {module.conv1.weight: 1, module.conv1.bias: 1}
          apoz:
            class: ActivationAPoZRankedFilterPruner
            group_type: Channels
            desired_sparsity: 0.3
            weights: [module.conv2.weight]
          levels:
            class: SparsityLevelParameterPruner
            levels: {module.conv1.bias: 0.5, module.fc.weight: 0.4, '*': 0.2, fc_weight: 0.3}
        policies:
          - pruner: {instance_name: mapped}
            starting_epoch: 0
            ending_epoch: 10
            frequency: 2
          - pruner: {instance_name: apoz}
            epochs: [3]
          - pruner: {instance_name: levels}
            epochs: [0]
    """)
    recipe = load_distiller_schedule(path)
    mapped, apoz, fc, rest = (_prune(s) for s in recipe.steps)
    assert mapped.targets.include == ("conv1",)  # the mapping's keys; the bias is reported
    # the one-shot activation pruners never read group_type: they rank filters
    assert apoz.structure is PruneStructure.channel and apoz.targets.include == ("conv2",)
    assert (fc.sparsity, fc.targets.include) == (0.4, ("fc",))
    assert (rest.sparsity, rest.targets.exclude) == (0.2, ("fc",))  # conv1.weight keeps '*'
    assert recipe.weight_names == ["module.conv1.weight", "module.conv2.weight",
                                   "module.fc.weight"]
    unsupported = "\n".join(recipe.unsupported)
    assert "mapped (AutomatedGradualPruner): cannot prune module.conv1.bias" in unsupported
    assert "levels (SparsityLevelParameterPruner): cannot prune module.conv1.bias, fc_weight" \
        in unsupported
    assert any("group_type 'Channels' is not read" in n for n in recipe.notes)


def test_policy_timing_nested_under_the_instance(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        quantizers:
          dorefa_quantizer: {class: DorefaQuantizer, bits_activations: 8, bits_weights: 4}
        policies:
          - quantizer:
              instance_name: dorefa_quantizer
              starting_epoch: 0
              ending_epoch: 200
              frequency: 1
    """)
    with pytest.raises(SpecError) as info:
        load_distiller_schedule(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:4: policies[0].quantizer: starting_epoch, ending_epoch, "
                              "frequency must sit at the policy level")


def test_legacy_arguments_name_today_s_form(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        quantizers:
          dorefa_quantizer:
            class: DorefaQuantizer
            bits_activations: 8
            bits_weights: 3
            bits_overrides:
              conv1: {acts: null, wts: null}
    """)
    with pytest.raises(SpecError) as info:
        load_distiller_schedule(path)
    (problem,) = info.value.problems
    assert f"{path}:6: quantizers.dorefa_quantizer.bits_overrides: DorefaQuantizer does not " \
        "accept" in problem
    assert "today's is 'overrides'" in problem


@pytest.mark.parametrize(("thinning", "second"), [(False, 0.3), (True, 0.51)])
def test_repeated_filter_prune_compounds_only_after_thinning(
        tmp_path: Path, thinning: bool, second: float) -> None:
    text = """
        pruners:
          f:
            class: L1RankedStructureParameterPruner
            group_type: Filters
            desired_sparsity: 0.3
            weights: [module.conv1.weight]
        extensions:
          thinner: {class: FilterRemover, thinning_func_str: remove_filters, arch: x,
                    dataset: y}
        policies:
          - pruner: {instance_name: f}
            epochs: [0]
          - pruner: {instance_name: f}
            epochs: [3]
    """
    if thinning:
        text = (text.rstrip() + "\n          - extension: {instance_name: thinner}"
                "\n            epochs: [1]\n")
    recipe = load_distiller_schedule(_write(tmp_path, textwrap.dedent(text)))
    first, again = (_prune(s) for s in recipe.steps)
    # 30% of the filters, then 30% of the remaining 70% after thinning: 51% in all
    assert (first.sparsity, again.sparsity) == (0.3, second)
