"""Run the signatures of a model.tflite through ai-edge-litert's Python interpreter (the host
check of the artifact; the app uses the C runtime). Inputs and outputs are the plan
interpreter's logical NCHW tensors; the model's NHWC boundary is applied here."""

from __future__ import annotations

import numpy as np
import torch


class LiteRtSegments:
    """SegmentRunner over a model.tflite: one signature runner per segment."""

    def __init__(self, model: bytes, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=bytes(model), num_threads=threads)
        self._signatures = self._interpreter.get_signature_list()
        self._runners = {}

    @property
    def method_names(self) -> set[str]:
        return set(self._signatures)

    def run(self, name, inputs):
        if name not in self._signatures:
            raise KeyError(f"model.tflite has no signature {name!r} (it has {', '.join(sorted(self._signatures))})")
        runner = self._runners.get(name) or self._runners.setdefault(name, self._interpreter.get_signature_runner(name))
        feeds = {}
        for index, tensor in enumerate(inputs):
            tensor = tensor.detach()
            physical = tensor.permute(0, 2, 3, 1) if tensor.dim() == 4 else tensor
            feeds[f"args_{index}"] = np.ascontiguousarray(physical.numpy())
        outputs = runner(**feeds)
        ordered = [outputs[f"output_{i}"] for i in range(len(outputs))]
        return [torch.from_numpy(np.array(y)).permute(0, 3, 1, 2) if y.ndim == 4 else torch.from_numpy(np.array(y))
                for y in ordered]
