"""Run the functions of a model.mlpackage through coremltools' Core ML bindings: the numeric
check of the package (the app uses the C runtime and runtime_ios' Objective-C adapter).

Only macOS has Core ML: everywhere else ``unavailable()`` says so and verify reports the
numerics as not run. Inputs and outputs are the plan interpreter's logical NCHW tensors; the
functions' NHWC boundary is applied here, as the runtime's NHWC buffers are on the device.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import numpy as np
import torch

from targets.coreml.emitter import INPUT_NAME, OUTPUT_NAME
from targets.coreml.quiet import coremltools, quiet


class CoreMLSegments:
    """SegmentRunner over a model.mlpackage: one MLModel per function, loaded on first use."""

    @staticmethod
    def unavailable() -> str | None:
        """Why Core ML cannot run here, or None when it can (macOS 15+, where multifunction
        ML programs load)."""
        if sys.platform != "darwin":
            return "needs macOS"
        release = platform.mac_ver()[0]
        if release and int(release.split(".")[0]) < 15:
            return f"needs macOS 15 or later for multifunction ML programs (this is {release})"
        return None

    def __init__(self, package: Path, compute_units: str = "ALL"):
        reason = self.unavailable()
        if reason is not None:
            raise RuntimeError(f"Core ML cannot run here: {reason}")
        self._ct = coremltools()
        self._package = str(package)
        self._units = getattr(self._ct.ComputeUnit, compute_units)
        self._models: dict = {}

    def _model(self, name: str):
        if name not in self._models:
            with quiet():
                self._models[name] = self._ct.models.MLModel(self._package, function_name=name,
                                                             compute_units=self._units)
        return self._models[name]

    def run(self, name, inputs):
        feeds = {}
        for i, tensor in enumerate(inputs):
            tensor = tensor.detach()
            physical = tensor.permute(0, 2, 3, 1) if tensor.dim() == 4 else tensor
            feeds[INPUT_NAME.format(i)] = np.ascontiguousarray(physical.numpy())
        results = self._model(name).predict(feeds)
        outputs = []
        for i in range(len(results)):
            y = torch.from_numpy(np.asarray(results[OUTPUT_NAME.format(i)]))
            outputs.append(y.permute(0, 3, 1, 2) if y.dim() == 4 else y)
        return outputs
