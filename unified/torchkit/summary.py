"""A model's :class:`~unified.spec.model_summary.ModelSummary`: module classes, the torch
functions its forward calls (torch.fx, no toolkit), parameter count."""

from __future__ import annotations

from collections import Counter

from torch import fx, nn

from unified.spec.model_summary import ModelSummary


def _torch_base(cls: type) -> str | None:
    """The first class in ``cls``'s MRO defined in torch (None for torch's own classes)."""
    if cls.__module__.startswith("torch."):
        return None
    for base in cls.__mro__[1:]:
        if base.__module__.startswith("torch.") and base is not nn.Module:
            return base.__name__
    return None


def _function_names(graph: fx.Graph) -> set[str]:
    names = set()
    for node in graph.nodes:
        if node.op == "call_function":
            names.add(getattr(node.target, "__name__", str(node.target)))
        elif node.op == "call_method":
            names.add(str(node.target))
    return names


def summarize(model: nn.Module) -> ModelSummary:
    """Layer types (every submodule), their torch base classes, the functions the forward
    calls (when torch.fx can trace it) and the parameter count of ``model``."""
    types = Counter(type(m).__name__ for name, m in model.named_modules() if name)
    bases = {type(m).__name__: base for m in model.modules()
             if (base := _torch_base(type(m))) is not None}
    functions: set[str] = set()
    error = None
    training = model.training
    try:  # in eval mode: what is exported (no dropout / drop-connect branches)
        functions = _function_names(fx.Tracer().trace(model.eval()))
    except Exception as exc:  # data-dependent control flow, unsupported Python ...
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        error = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    finally:
        model.train(training)
    return ModelSummary(
        parameters=sum(p.numel() for p in model.parameters()),
        layer_types=dict(sorted(types.items())),
        base_types=dict(sorted(bases.items())),
        functions=tuple(sorted(functions)),
        fx_error=error,
    )

