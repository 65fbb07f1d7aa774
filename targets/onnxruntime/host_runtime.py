"""Run the segments of a model.onnxpack through onnxruntime's Python API (the host check of
the artifact; the app uses the C runtime). Inputs and outputs are the plan interpreter's
logical NCHW tensors; the models' NHWC boundary is applied here."""

from __future__ import annotations

import numpy as np
import torch

from targets.onnxruntime.pack import unpack_segments


class OnnxRuntimeSegments:
    """SegmentRunner over a model.onnxpack: one InferenceSession per segment, one thread each."""

    def __init__(self, pack: bytes, threads: int = 1):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._sessions = {name: onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
                          for name, model in unpack_segments(bytes(pack)).items()}

    @property
    def method_names(self) -> set[str]:
        return set(self._sessions)

    def run(self, name, inputs):
        session = self._sessions[name]
        feeds = {}
        for spec, tensor in zip(session.get_inputs(), inputs):
            tensor = tensor.detach()
            physical = tensor.permute(0, 2, 3, 1) if tensor.dim() == 4 else tensor
            feeds[spec.name] = np.ascontiguousarray(physical.numpy())
        outputs = session.run(None, feeds)
        return [torch.from_numpy(y).permute(0, 3, 1, 2) if y.ndim == 4 else torch.from_numpy(y) for y in outputs]
