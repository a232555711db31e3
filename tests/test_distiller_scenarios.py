"""Distiller schedules run end to end: the shipped scenarios load, the Distiller weight names
bind to the builtin models, concurrent scheduled prune steps follow Distiller's formula on
pytorch, and NNI thins the simplenet recipe into a physically smaller model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from unified.context import ReferenceArtifacts
from unified.load.scenario_file import load_scenario
from unified.spec.scenario import Scenario

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"
SCHEDULES = SCENARIOS / "schedules"
SIMPLENET_SCHEDULE = SCHEDULES / "simplenet_mnist_pruning.yaml"
DISTILLER_COMMIT = "d859fc85a3c9c3048442a4ccd9b98ac45f1e0dc4"

# Two AGP policies with different spans, run together as Distiller does (end exclusive).
CONCURRENT_AGP = {
    "version": 1,
    "pruners": {
        "agp_a": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05,
                  "final_sparsity": 0.8, "weights": ["module.conv2.weight", "module.fc1.weight"]},
        "agp_b": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1,
                  "final_sparsity": 0.5, "weights": ["module.fc2.weight"]},
    },
    "policies": [
        {"pruner": {"instance_name": "agp_a"}, "starting_epoch": 0, "ending_epoch": 4,
         "frequency": 1},
        {"pruner": {"instance_name": "agp_b"}, "starting_epoch": 1, "ending_epoch": 4,
         "frequency": 1},
        {"lr_scheduler": {"instance_name": "decay"}, "starting_epoch": 1, "ending_epoch": 3,
         "frequency": 1},
    ],
    # stepped at the end of epochs 1 and 2: epochs 0-1 at lr, 2 at lr/2, 3 at lr/4
    "lr_schedulers": {"decay": {"class": "ExponentialLR", "gamma": 0.5}},
}

# QAT with a warm-up LR: LinearLR starts at half the lr (torch's start_factor), so even the
# first epoch shows whether the scheduler reached the QAT loop.
QAT_WARMUP = {
    "quantizers": {"qat": {"class": "QuantAwareTrainRangeLinearQuantizer",
                           "bits_activations": 8, "bits_weights": 8}},
    "lr_schedulers": {"warmup": {"class": "LinearLR", "start_factor": 0.5, "total_iters": 2}},
    "policies": [
        {"quantizer": {"instance_name": "qat"}, "starting_epoch": 0, "ending_epoch": 10,
         "frequency": 1},
        {"lr_scheduler": {"instance_name": "warmup"}, "starting_epoch": 0, "ending_epoch": 10,
         "frequency": 1},
    ],
}


def distiller_agp(epoch: int, initial: float, final: float, start: int, end: int,
                  freq: int = 1) -> float:
    """Distiller's AgpPruningRate written out (not via unified.spec.schedules): the mask's target
    during ``epoch`` (the latest pruning epoch <= epoch), 0 before ``start``."""
    if epoch < start:
        return 0.0
    span = ((end - start - 1) // freq) * freq
    last = start + min((epoch - start) // freq * freq, span)
    return final + (initial - final) * (1 - (last - start) / span) ** 3


def model_parameter_names(source: str, input_shape: tuple[int, int, int]) -> list[str]:
    from unified.torchkit.models import build_model

    return [n for n, _ in build_model(source, 10, input_shape).named_parameters()]


# --- the shipped files --------------------------------------------------------------------


def test_shipped_scenario_loads_and_expands() -> None:
    scenario = load_scenario(SCENARIOS / "distiller.yaml")
    assert set(scenario.imported) == {"simplenet-agp", "simplenet-channels", "convnet-agp",
                                      "distill-then-agp", "qat-linear", "post-train-6bit",
                                      "resnet18-agp"}
    for recipe in ("simplenet-agp", "simplenet-channels", "convnet-agp", "distill-then-agp",
                   "resnet18-agp"):
        steps = scenario.recipes[recipe].steps
        assert any(s.kind == "prune" and s.schedule is not None for s in steps)  # type: ignore[union-attr]
    for info in scenario.imported.values():
        assert Path(info.source).is_file()
        assert not info.unsupported
    (lr,) = scenario.imported["convnet-agp"].lr_schedulers
    assert (lr.torch_class, lr.args, lr.epochs) == (
        "torch.optim.lr_scheduler.StepLR", {"step_size": 2, "gamma": 0.5}, (0, 1, 2, 3, 4))
    (qat,) = scenario.recipes["qat-linear"].steps
    assert (qat.kind, qat.method, qat.symmetric) == ("quantize", "qat", False)  # type: ignore[union-attr]
    assert {"pytorch", "nni", "coreml", "tfmot", "onnxruntime"} <= set(scenario.backends)
    by_model = {view.model.name: set(view.recipes) for view in scenario.views()}
    assert by_model == {"simplenet": {"fp32", "simplenet-agp", "simplenet-channels"},
                        "convnet": {"fp32", "convnet-agp", "distill-then-agp", "qat-linear",
                                    "post-train-6bit"},
                        "resnet18": {"fp32", "resnet18-agp"}}


def test_simplenet_scenario_asks_for_thinning() -> None:
    scenario = load_scenario(SCENARIOS / "distiller.yaml")
    assert scenario.model.source == "builtin:simplenet-mnist"
    assert scenario.imported["simplenet-agp"].thinning == ("filters",)
    steps = scenario.recipes["simplenet-agp"].steps
    assert [s.targets.include for s in steps] == [("conv1",), ("conv2",), ("fc2",)]  # type: ignore[union-attr]


@pytest.mark.parametrize("name", [SIMPLENET_SCHEDULE.name, "quant_aware_train_linear_quant.yaml",
                                  "resnet18_imagenet_post_train.yaml",
                                  "resnet18.schedule_agp.yaml"])
def test_copied_distiller_file_is_unchanged_with_source_and_license(name: str) -> None:
    text = (SCHEDULES / name).read_text()
    header = text.splitlines()[:2]
    assert DISTILLER_COMMIT in header[0] and "Apache-2.0" in header[1]
    assert (SCHEDULES / "LICENSE.distiller.md").is_file()
    # the test fixture is the same Distiller file under its own two-line header
    fixture = REPO / "tests" / "fixtures" / "distiller" / name
    assert text.splitlines()[2:] == fixture.read_text().splitlines()[2:]


def test_simplenet_schedule_binds_to_builtin_simplenet() -> None:
    from unified.distiller.schedule import load_distiller_schedule, match_weight_names

    schedule = load_distiller_schedule(SIMPLENET_SCHEDULE)
    names = model_parameter_names("builtin:simplenet-mnist", (1, 28, 28))
    assert names == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                     "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    mapping, unmatched = match_weight_names(schedule.weight_names, names)
    assert unmatched == []
    assert mapping == {"module.conv1.weight": ["conv1.weight"],
                       "module.conv2.weight": ["conv2.weight"],
                       "module.fc2.weight": ["fc2.weight"]}


@pytest.mark.parametrize("source", ["builtin:convnet", "builtin:convnet-tiny"])
def test_convnet_schedule_binds_to_convnet_and_its_tiny_student(source: str) -> None:
    from unified.distiller.schedule import load_distiller_schedule, match_weight_names

    schedule = load_distiller_schedule(SCHEDULES / "convnet_agp.yaml")
    _, unmatched = match_weight_names(schedule.weight_names,
                                      model_parameter_names(source, (1, 28, 28)))
    assert unmatched == []


def test_simplenet_matches_distillers_architecture() -> None:
    import torch

    from unified.torchkit.models import build_model, count_parameters

    model = build_model("builtin:simplenet-mnist", 10, (1, 28, 28))
    # conv1 1*20*25+20, conv2 20*50*25+50, fc1 800*500+500, fc2 500*10+10
    assert count_parameters(model) == 520 + 25050 + 400500 + 5010
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_nni_rules_for_several_prune_steps() -> None:
    from adapters.nni import ADAPTER

    scenario = load_scenario(SCENARIOS / "distiller.yaml")
    plan = ADAPTER.plan(scenario.recipes["simplenet-agp"])
    assert plan.status == "approximated"
    apart = [{"prune": {"sparsity": 0.5}}, {"finetune": {}}, {"prune": {"sparsity": 0.3}}]
    from unified.spec.steps import Recipe

    assert ADAPTER.plan(Recipe.model_validate(apart)).status == "unsupported"


# --- end to end on a tiny budget ----------------------------------------------------------


def _write_scenario(folder: Path, recipes: dict[str, Any], backends: list[str]) -> Path:
    data = {
        "version": 1, "name": "distiller-tiny", "seed": 0,
        # digits resized to 28x28: simplenet's fc1 expects a 4x4x50 map
        "model": {"source": "builtin:simplenet-mnist", "weights": "train",
                  "input_shape": [1, 28, 28], "num_classes": 10},
        "data": {"source": "digits", "train": 500, "calibration": 64, "test": 200},
        "budget": {"train_epochs": 1, "finetune_epochs": 1, "batch_size": 32, "lr": 0.05},
        "evaluate": {"latency": {"warmup": 1, "runs": 3, "threads": 1}, "timeout": 600},
        "backends": backends,
        "recipes": recipes,
    }
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny_distiller(tmp_path_factory: pytest.TempPathFactory,
                   cache_dir: Path) -> tuple[Scenario, ReferenceArtifacts]:
    from unified.run.reference import prepare_reference

    folder = tmp_path_factory.mktemp("distiller-scenario")
    (folder / "concurrent_agp.yaml").write_text(yaml.safe_dump(CONCURRENT_AGP))
    (folder / "qat_warmup.yaml").write_text(yaml.safe_dump(QAT_WARMUP))
    path = _write_scenario(folder, {
        "agp": {"distiller": "concurrent_agp.yaml"},
        "simplenet-agp": {"distiller": str(SIMPLENET_SCHEDULE)},
        "qat-warmup": {"distiller": "qat_warmup.yaml"},
        "simplenet-channels": {"distiller": str(SCHEDULES / "simplenet_channels.yaml")},
    }, ["pytorch", "nni"])
    scenario = load_scenario(path)
    return scenario, prepare_reference(scenario, cache_dir)


def _run(tiny: tuple[Scenario, ReferenceArtifacts], recipe: str, backend: str,
         workdir: Path) -> dict[str, Any]:
    from unified.run.job import Job, execute

    scenario, reference = tiny
    return execute(scenario, Job(recipe, backend), workdir, reference)


@pytest.mark.slow
def test_pytorch_runs_concurrent_agp_policies_like_distiller(
        tiny_distiller: tuple[Scenario, ReferenceArtifacts], tmp_path: Path) -> None:
    record = _run(tiny_distiller, "agp", "pytorch", tmp_path)
    log = record["epoch_log"]
    # one training loop of max(end_epoch) = 4 epochs, one entry per step per epoch
    assert [(e["epoch"], e["step"]) for e in log] == [(e, s) for e in range(4) for s in (1, 2)]
    policies = {1: (0.05, 0.8, 0, 4), 2: (0.1, 0.5, 1, 4)}
    for entry in log:
        expected = distiller_agp(entry["epoch"], *policies[entry["step"]])
        assert entry["target"] == pytest.approx(expected, abs=1e-6)
        assert abs(entry["sparsity"] - expected) < 0.01
    assert any("ran concurrently in one training loop" in n for n in record["notes"])
    lr = tiny_distiller[0].budget.effective_finetune_lr
    assert (f"Distiller LR scheduler decay: ExponentialLR(gamma=0.5) applied to the 4-epoch "
            f"pruning loop: lr by epoch {lr:.4g} (0-1), {lr / 2:.4g} (2), {lr / 4:.4g} (3)"
            ) in record["notes"]
    assert record["status"] == "ok"


@pytest.mark.slow
def test_nni_runs_concurrent_agp_policies_like_distiller(
        tiny_distiller: tuple[Scenario, ReferenceArtifacts], tmp_path: Path) -> None:
    record = _run(tiny_distiller, "agp", "nni", tmp_path)
    log = record["epoch_log"]
    assert [(e["epoch"], e["step"]) for e in log] == [(e, s) for e in range(4) for s in (1, 2)]
    policies = {1: (0.05, 0.8, 0, 4), 2: (0.1, 0.5, 1, 4)}
    for entry in log:
        assert abs(entry["sparsity"] - distiller_agp(entry["epoch"], *policies[entry["step"]])) \
            < 0.01, entry
    assert any(n.startswith("Distiller LR scheduler decay: ExponentialLR(gamma=0.5) applied to "
                            "the 4-epoch pruning loop") for n in record["notes"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["pytorch", "nni"])
def test_qat_trains_with_the_distiller_lr_schedule(
        tiny_distiller: tuple[Scenario, ReferenceArtifacts], tmp_path: Path,
        backend: str) -> None:
    record = _run(tiny_distiller, "qat-warmup", backend, tmp_path)
    lr = tiny_distiller[0].budget.effective_finetune_lr
    applied = [n for n in record["notes"] if n.startswith("Distiller LR scheduler warmup")]
    assert len(applied) == 1 and applied[0].endswith(f"lr by epoch {lr / 2:.4g} (0)"), applied
    assert record["quantized_compute_ops"] > 0


@pytest.mark.slow
def test_nni_thins_input_channels_and_their_producers(
        tiny_distiller: tuple[Scenario, ReferenceArtifacts], tmp_path: Path) -> None:
    record = _run(tiny_distiller, "simplenet-channels", "nni", tmp_path)
    for entry in (e for e in record["epoch_log"] if e["kind"] == "prune"):
        assert abs(entry["sparsity"] - distiller_agp(entry["epoch"], 0.1, 0.5, 0, 3)) < 0.01
    details = record["details"]
    # conv2 keeps 10 of 20 input channels, so conv1 keeps 10 filters; fc2 keeps 250 of 500
    # input features, so fc1 keeps 250 neurons: half of 431,080 parameters, within rounding
    assert details["parameters_before"] == 431080
    assert details["parameters_after"] == pytest.approx(215570, rel=0.01)
    assert record["size_ratio"] > 1.9


@pytest.mark.slow
def test_pytorch_notes_that_it_cannot_thin(
        tiny_distiller: tuple[Scenario, ReferenceArtifacts], tmp_path: Path) -> None:
    record = _run(tiny_distiller, "simplenet-agp", "pytorch", tmp_path)
    assert any("thinning" in n and "only zeroes" in n for n in record["notes"])
    assert record["details"]["torch_parameters"] == \
        record["details"]["reference_torch_parameters"]
    assert sorted({e["step"] for e in record["epoch_log"]}) == [1, 2, 3]


@pytest.mark.slow
def test_nni_thins_the_simplenet_recipe(
        tiny_distiller: tuple[Scenario, ReferenceArtifacts], tmp_path: Path) -> None:
    record = _run(tiny_distiller, "simplenet-agp", "nni", tmp_path)
    details = record["details"]
    assert details["parameters_after"] < details["parameters_before"]
    assert record["size_ratio"] > 1.1  # the ONNX itself is smaller, not just zeroed
    final = {e["step"]: e for e in record["epoch_log"] if e["kind"] == "prune" and e["epoch"] == 1}
    # Distiller targets at the last pruning epoch: conv1 0.1, conv2 0.2 (filters), fc2 0.15
    for step, target in ((1, 0.1), (2, 0.2), (3, 0.15)):
        assert abs(final[step]["sparsity"] - target) < 0.01
    assert any("ModelSpeedup" in n for n in record["notes"])
