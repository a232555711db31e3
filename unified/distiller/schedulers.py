"""Distiller learning-rate schedulers (internal to :mod:`unified.distiller.schedule`): torch's
and Distiller's own, written as torch schedulers the training loops replay per epoch.
Argument lists are those of the torch / Distiller constructors."""

from __future__ import annotations

from unified.distiller.parse import Builder, ClassSpec, Component, LRSchedulerSpec, check_args

TORCH_LR = "torch.optim.lr_scheduler."
# name: (required, optional) constructor arguments besides optimizer / last_epoch / verbose
LR_SCHEDULERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "StepLR": (("step_size",), ("gamma",)),
    "MultiStepLR": (("milestones",), ("gamma",)),
    "ConstantLR": ((), ("factor", "total_iters")),
    "LinearLR": ((), ("start_factor", "end_factor", "total_iters")),
    "ExponentialLR": (("gamma",), ()),
    "PolynomialLR": ((), ("total_iters", "power")),
    "CosineAnnealingLR": (("T_max",), ("eta_min",)),
    "CosineAnnealingWarmRestarts": (("T_0",), ("T_mult", "eta_min")),
    "ReduceLROnPlateau": ((), ("mode", "factor", "patience", "threshold", "threshold_mode",
                               "cooldown", "min_lr", "eps")),
    "CyclicLR": (("base_lr", "max_lr"), ("step_size_up", "step_size_down", "mode", "gamma",
                                         "scale_mode", "cycle_momentum", "base_momentum",
                                         "max_momentum")),
    "OneCycleLR": (("max_lr",), ("total_steps", "epochs", "steps_per_epoch", "pct_start",
                                 "anneal_strategy", "cycle_momentum", "base_momentum",
                                 "max_momentum", "div_factor", "final_div_factor",
                                 "three_phase")),
}
LR_NOT_FROM_YAML = {
    "LambdaLR": "needs a Python function (lr_lambda), which a YAML file cannot hold",
    "MultiplicativeLR": "needs a Python function (lr_lambda), which a YAML file cannot hold",
    "SequentialLR": "takes other scheduler objects, which a YAML file cannot hold",
    "ChainedScheduler": "takes other scheduler objects, which a YAML file cannot hold",
}
# Distiller's own (distiller/learning_rate.py); its PolynomialLR shadows torch's.
LR_DISTILLER = {
    "MultiStepMultiGammaLR": (("milestones", "gammas"), ()),
    "PolynomialLR": (("T_max", "power"), ()),
}


def translate_lr(b: Builder, comp: Component) -> None:
    name = comp.class_name
    required: tuple[str, ...]
    optional: tuple[str, ...]
    epochs = sorted({e for p in comp.policies for e in p.when.epochs})
    if name in LR_DISTILLER:
        required, optional = LR_DISTILLER[name]
    elif name in LR_NOT_FROM_YAML:
        b.unsupport(comp, LR_NOT_FROM_YAML[name])
        return
    else:
        required, optional = LR_SCHEDULERS[name]
    if not check_args(b, comp, ClassSpec(required, optional, translate_lr)):
        return
    args = {k: v for k, v in comp.args.items() if k not in ("name", "model", "optimizer")}
    if name == "MultiStepMultiGammaLR":
        milestones, gammas = args["milestones"], args["gammas"]
        if len(milestones) != len(gammas) or list(milestones) != sorted(milestones):
            b.problem(comp.arg_path("gammas"), f"one gamma per milestone, milestones "
                      f"increasing. Got milestones {milestones}, gammas {gammas}")
            return
        # lr = base * gamma_1 * ... * gamma_k after k milestones: one chainable torch
        # MultiStepLR per milestone, all on the same optimizer, gives the same rates
        b.note(comp, "Distiller's MultiStepMultiGammaLR written as one torch MultiStepLR per "
               "milestone, chained on the same optimizer (same learning rate every epoch)")
        for milestone, gamma in zip(milestones, gammas, strict=True):
            b.lr_schedulers.append(LRSchedulerSpec(
                comp.name, name, TORCH_LR + "MultiStepLR",
                {"milestones": [milestone], "gamma": gamma}, epochs))
        return
    if name == "PolynomialLR":
        b.note(comp, "Distiller's PolynomialLR(T_max, power) mapped to torch PolynomialLR"
               "(total_iters=T_max, power)")
        args = {"total_iters": args["T_max"], "power": args["power"]}
    if name in ("CyclicLR", "OneCycleLR"):
        b.note(comp, f"{name} is stepped once per epoch by Distiller (not per batch)")
    if not epochs:
        b.note(comp, "defined but no policy steps it")
    b.lr_schedulers.append(LRSchedulerSpec(comp.name, name, TORCH_LR + name, args, epochs))


def is_lr_scheduler(name: str) -> bool:
    return name in LR_SCHEDULERS or name in LR_NOT_FROM_YAML or name in LR_DISTILLER
