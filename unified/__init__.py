"""squeezelab's backend-neutral core: spec, scenarios, harness, runner, report, CLI.

Importing this package never imports torch, tensorflow, nni or coremltools.
"""

from __future__ import annotations

import os

# onnxruntime (1.32) sends usage telemetry unless this is set before it is imported.
# setdefault: a user's explicit choice wins. Worker processes inherit the environment.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
