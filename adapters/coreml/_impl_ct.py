"""Import coremltools safely next to torch and tensorflow.

coremltools imports tensorflow whenever it is installed; TF's shared libraries loaded before
triton (which torch._dynamo imports, e.g. inside torch.onnx.export) make triton segfault on
this stack. Core ML never needs TF for a torch model, so triton is loaded first and TF is
hidden while coremltools probes for it (its TF converters are then disabled).
"""

import sys

import torch
import torch._dynamo  # load triton before anything can load TF

_HIDE_TF = "tensorflow" not in sys.modules
if _HIDE_TF:
    sys.modules["tensorflow"] = None  # type: ignore[assignment]
try:
    import coremltools as ct
    import coremltools.optimize as cto
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    from coremltools.models import utils as ct_model_utils
finally:
    if _HIDE_TF:
        sys.modules.pop("tensorflow", None)

__all__ = ["ct", "ct_model_utils", "cto", "milproto_load", "torch"]
