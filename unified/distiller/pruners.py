"""Distiller pruners -> unified ``prune`` steps (internal to :mod:`unified.distiller.schedule`):
the table of Distiller's pruner classes, their arguments and translators (in
``prune_translators``).

Argument lists are those of the constructors in ``distiller/pruning`` (IntelLabs/distiller).
"""

from __future__ import annotations

from unified.distiller.parse import Builder, ClassSpec, Component, check_args
from unified.distiller.prune_translators import (
    FILTER_GROUPS,
    LP_GROUPS,
    agp_fine,
    sensitivity,
    sparsity_levels,
    structured,
    unsupported,
)
from unified.spec.steps import PruneCriterion

_LP_OPTIONAL = ("group_dependency", "kwargs", "noise", "group_size", "rounding_fn")
_AGP = ("initial_sparsity", "final_sparsity", "group_type", "weights")
_ONE_SHOT = ("group_type", "desired_sparsity", "weights")
_APOZ = ("approximated: Distiller ranks filters by the average percentage of zero activations "
         "(APoZ); the unified spec has no activation criterion, l1 filter magnitude is used")
_MEAN = ("approximated: Distiller ranks filters by their mean activation; the unified spec has "
         "no activation criterion, l1 filter magnitude is used")
_GRAD = ("approximated: Distiller ranks filters by mean(weight x gradient), mapped to the taylor "
         "criterion")
_BERNOULLI = ("drops random filters with a Bernoulli probability (DropFilter-style "
              "regularization); the unified spec has no such step")

PRUNERS: dict[str, ClassSpec] = {
    "AutomatedGradualPruner": ClassSpec(
        ("initial_sparsity", "final_sparsity", "weights"), ("rate_scheduler_factory",), agp_fine),
    "L1RankedStructureParameterPruner_AGP": ClassSpec(
        _AGP, ("group_dependency", "kwargs"),
        structured(PruneCriterion.l1, agp=True, groups=LP_GROUPS)),
    "L2RankedStructureParameterPruner_AGP": ClassSpec(
        _AGP, ("group_dependency", "kwargs"),
        structured(PruneCriterion.l2, agp=True, groups=LP_GROUPS)),
    "ActivationAPoZRankedFilterPruner_AGP": ClassSpec(
        _AGP, ("group_dependency",),
        structured(PruneCriterion.l1, agp=True, groups=FILTER_GROUPS, approx=_APOZ)),
    "ActivationMeanRankedFilterPruner_AGP": ClassSpec(
        _AGP, ("group_dependency",),
        structured(PruneCriterion.l1, agp=True, groups=FILTER_GROUPS, approx=_MEAN)),
    "GradientRankedFilterPruner_AGP": ClassSpec(
        _AGP, ("group_dependency",),
        structured(PruneCriterion.taylor, agp=True, groups=FILTER_GROUPS, approx=_GRAD)),
    "RandomRankedFilterPruner_AGP": ClassSpec(
        _AGP, ("group_dependency",),
        structured(PruneCriterion.random, agp=True, groups=FILTER_GROUPS)),
    "BernoulliFilterPruner_AGP": ClassSpec(_AGP, ("group_dependency",), unsupported(_BERNOULLI)),
    "L1RankedStructureParameterPruner": ClassSpec(
        _ONE_SHOT, _LP_OPTIONAL, structured(PruneCriterion.l1, agp=False, groups=LP_GROUPS)),
    "L2RankedStructureParameterPruner": ClassSpec(
        _ONE_SHOT, _LP_OPTIONAL, structured(PruneCriterion.l2, agp=False, groups=LP_GROUPS)),
    "ActivationAPoZRankedFilterPruner": ClassSpec(
        _ONE_SHOT, ("group_dependency",),
        structured(PruneCriterion.l1, agp=False, groups=FILTER_GROUPS, approx=_APOZ,
                   checks_group=False)),
    "ActivationMeanRankedFilterPruner": ClassSpec(
        _ONE_SHOT, ("group_dependency",),
        structured(PruneCriterion.l1, agp=False, groups=FILTER_GROUPS, approx=_MEAN,
                   checks_group=False)),
    "GradientRankedFilterPruner": ClassSpec(
        _ONE_SHOT, ("group_dependency",),
        structured(PruneCriterion.taylor, agp=False, groups=FILTER_GROUPS, approx=_GRAD,
                   checks_group=False)),
    "RandomRankedFilterPruner": ClassSpec(
        _ONE_SHOT, ("group_dependency",),
        structured(PruneCriterion.random, agp=False, groups=FILTER_GROUPS,
                   checks_group=False)),
    "BernoulliFilterPruner": ClassSpec(_ONE_SHOT, ("group_dependency",), unsupported(_BERNOULLI)),
    "FMReconstructionChannelPruner": ClassSpec(
        _ONE_SHOT, ("group_dependency", "kwargs", "magnitude_fn", "group_size", "rounding_fn",
                    "ranking_noise"),
        structured(PruneCriterion.l1, agp=False, groups=("Channels",),
                   approx="approximated: the least-squares reconstruction of the next layer's "
                          "weights from feature maps is not reproduced")),
    "RandomLevelStructureParameterPruner": ClassSpec(
        ("group_type", "sparsity_range", "weights"), ("group_dependency", "kwargs"),
        unsupported("prunes a random fraction drawn from sparsity_range at every step "
                    "(DropFilter-like regularization); the unified spec has no such step")),
    "SparsityLevelParameterPruner": ClassSpec(("levels",), (), sparsity_levels),
    "SensitivityPruner": ClassSpec(("sensitivities",), (), sensitivity),
    "MagnitudeParameterPruner": ClassSpec(
        ("thresholds",), (),
        unsupported("prunes by absolute magnitude thresholds; the unified spec prunes to a "
                    "sparsity level, and a threshold's level depends on the trained weights")),
    "SplicingPruner": ClassSpec(
        ("sensitivities", "low_thresh_mult", "hi_thresh_mult"), ("sensitivity_multiplier",),
        unsupported("dynamic network surgery: masks are spliced back (pruned weights can "
                    "return) between two thresholds; the unified spec has no such step")),
    "BaiduRNNPruner": ClassSpec(
        ("q", "ramp_epoch_offset", "ramp_slope_mult", "weights"), (),
        unsupported("Baidu's RNN pruning ramps an absolute threshold; the unified spec prunes "
                    "conv/linear weights to sparsity levels")),
    "StructureParameterPruner": ClassSpec(
        ("reg_regims", "threshold_criteria"), (),
        unsupported("zeroes structures whose norm falls below a threshold after regularization; "
                    "the unified spec has no threshold pruning")),
}


def translate_pruner(b: Builder, comp: Component) -> None:
    spec = PRUNERS[comp.class_name]
    if check_args(b, comp, spec):
        spec.translate(b, comp)
