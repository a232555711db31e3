"""Distiller regularizers (unsupported: the unified spec has no loss-term step, each says
why) and extensions (thinning: which all-zero structures to remove). Internal to
:mod:`unified.distiller.schedule`."""

from __future__ import annotations

from unified.distiller.parse import Builder, ClassSpec, Component, check_args

_REG_REASON = "the unified spec has no regularization step (a loss term added during training)"
REGULARIZERS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "L1Regularizer": (("reg_regims",), ("threshold_criteria",),
                      f"adds an L1 penalty on the weights to the loss; {_REG_REASON}"),
    "GroupLassoRegularizer": (("reg_regims",), ("threshold_criteria",),
                              f"adds a group-lasso penalty (structured sparsity by "
                              f"regularization); {_REG_REASON}"),
    "GroupVarianceRegularizer": (("reg_regims",), (),
                                 f"adds a group-variance penalty; {_REG_REASON}"),
    "DropFilterRegularizer": (("reg_regims",), ("threshold_criteria",),
                              "drops random filters during training (and distiller.regularization "
                              "does not export it, so Distiller's config cannot build it); "
                              + _REG_REASON),
}


def translate_regularizer(b: Builder, comp: Component) -> None:
    required, optional, reason = REGULARIZERS[comp.class_name]
    if check_args(b, comp, ClassSpec(required, optional, translate_regularizer)):
        criteria = comp.args.get("threshold_criteria")
        if criteria is not None:
            reason += (f"; with threshold_criteria {criteria} it also zeroes the weights / groups "
                       "below the threshold after every mini-batch (pruning by regularization)")
        b.unsupport(comp, reason)


THINNING_FUNCS = {
    "remove_filters": ("filters",),
    "remove_channels": ("channels",),
    "contract_model": ("filters", "channels"),
}
EXTENSIONS = ("StructureRemover", "FilterRemover", "ChannelRemover")


def translate_extension(b: Builder, comp: Component) -> None:
    spec = ClassSpec(("thinning_func_str", "arch", "dataset"), (), translate_extension)
    if not check_args(b, comp, spec):
        return
    func = comp.args["thinning_func_str"]
    if not isinstance(func, str) or func not in THINNING_FUNCS:
        b.unsupport(comp, f"thinning function {func!r} is not one of "
                    f"{', '.join(THINNING_FUNCS)}")
        return
    kinds = THINNING_FUNCS[func]
    for kind in kinds:
        if kind not in b.thinning:
            b.thinning.append(kind)
    epochs = sorted({e for p in comp.policies for e in p.when.epochs})
    b.thinning_epochs.update(epochs)
    b.note(comp, f"thinning requested: {func} physically removes all-zero "
           f"{' and '.join(kinds)} at epochs {epochs}; whether a backend removes them is up to "
           "the backend (reported per job)")
