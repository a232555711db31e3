"""NNI 3.0 on conv / linear subclasses (e.g. EfficientNet's ``Conv2dStaticSamePadding``).

NNI looks a module's compression setting up by its class *name* (``ModuleSetting.registry``),
so a subclass of ``nn.Conv2d`` fails with "Conv2dStaticSamePadding is not registered, please
register setting with QuantizationSetting.register()". NNI's own remedy is that call: each
subclass is registered with the setting of the nearest registered base class (the subclass
computes with the same ``weight`` / ``bias``; NNI's wrapper still calls its own forward).
"""

from __future__ import annotations

from nni.compression.base.setting import ModuleSetting, PruningSetting, QuantizationSetting
from torch import nn

from unified.torchkit.targets import op_type


def _registered_base(registry: dict[str, object], cls: type) -> str | None:
    for base in cls.__mro__[1:]:
        if base.__name__ in registry and issubclass(base, nn.Module):
            return base.__name__
    return None


def register_layer_subclasses(model: nn.Module) -> list[str]:
    """Register every conv / linear subclass in ``model`` that NNI does not know with its
    base class's pruning and quantization settings; returns 'Subclass as Base' for each."""
    done: list[str] = []
    settings: tuple[type[ModuleSetting], ...] = (PruningSetting, QuantizationSetting)
    for module in model.modules():
        cls = type(module)
        if op_type(module) is None and not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        for setting in settings:
            if cls.__name__ in setting.registry:
                continue
            base = _registered_base(setting.registry, cls)
            if base is not None:
                setting.register(cls.__name__, setting.registry[base])
                text = f"{cls.__name__} as {base}"
                if text not in done:
                    done.append(text)
    return done


def uncalled_layers(model: nn.Module, names: list[str],
                    input_shape: tuple[int, ...]) -> list[str]:
    """Those of ``names`` whose forward a forward pass of ``model`` never calls: NNI wraps a
    module's forward, so a layer whose weight its parent uses directly (the ``out_proj`` of
    ``nn.MultiheadAttention`` goes to ``F.multi_head_attention_forward``) is never observed and
    NNI's calibration has no range for it (``compute_scale_zp`` returns None)."""
    import torch

    called: set[str] = set()
    hooks = []
    for name in names:
        def hook(_module: nn.Module, _inp: object, _out: object, name: str = name) -> None:
            called.add(name)

        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        model.train(training)
        for handle in hooks:
            handle.remove()
    return [n for n in names if n not in called]
