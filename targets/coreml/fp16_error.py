"""The expected error of ``--precision fp16``, measured here without Core ML: the frame program
run by the plan interpreter twice over one clip, its segments once as the compiler's torch
modules in float32 and once in float16 (weights and activations in half precision, outputs
back to float32 for the runtime's buffers, as an fp16 Core ML package does at its casts). The
gates run in float32 both times, as the C runtime runs them on the device.

Reported as ``dynexport verify`` reports a backend: the largest |fp16 - fp32| over the range of
the fp32 output on any frame, and the fraction of gate decisions that differ. Core ML's own
fp16 kernels (Neural Engine, GPU) round differently from torch's CPU ones: this is the size
of the error to expect, not a bound.

    python -m targets.coreml.fp16_error examples/skipconv_heatmap/model.pt --frames 16
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch


class HalfTorchSegments:
    """SegmentRunner: each segment's torch module in float16, inputs and outputs float32."""

    def __init__(self, segments):
        self.modules = {name: copy.deepcopy(artifact.module).eval().half() for name, artifact in segments.items()}

    def run(self, name, inputs):
        with torch.no_grad():
            outputs = self.modules[name](*[x.half() if x.is_floating_point() else x for x in inputs])
        outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        return [y.float() if y.is_floating_point() else y for y in outputs]


def _stream(program, runner, frames, resets):
    from dynexport.plan.interpreter import FrameProgramInterpreter

    interpreter = FrameProgramInterpreter(program, runner)
    outputs, decisions = [], []
    for t, frame in enumerate(frames):
        if t in resets:
            interpreter.reset()
        outputs.append(interpreter.step(torch.from_numpy(frame[None])).numpy())
        decisions.append(interpreter.layer_decisions())
    return np.stack(outputs), decisions


def _decision_sets(frame_decisions):
    """Per layer: the set of active blocks and the channel decisions (if any)."""
    result = []
    for layer in frame_decisions:
        if isinstance(layer, tuple):
            result.append((set(layer[0]), tuple(layer[1])))
        else:
            result.append((set(layer), ()))
    return result


def measure(compiled, frames: np.ndarray, resets=(0,)) -> dict:
    """fp16 vs fp32 over ``frames`` (float32 [T, C, H, W]) for a compiled model."""
    from dynexport.plan.interpreter import TorchSegments

    reference, reference_decisions = _stream(compiled.program, TorchSegments(compiled.segments), frames, resets)
    half, half_decisions = _stream(compiled.program, HalfTorchSegments(compiled.segments), frames, resets)
    value_range = float(reference.max() - reference.min()) or 1.0
    per_frame = np.abs(half.astype(np.float64) - reference).reshape(len(frames), -1).max(axis=1) / value_range
    differing = total = 0
    for ours, theirs in zip(half_decisions, reference_decisions):
        for (blocks_a, channels_a), (blocks_b, channels_b) in zip(_decision_sets(ours), _decision_sets(theirs)):
            differing += len(blocks_a ^ blocks_b) + sum(a != b for a, b in zip(channels_a, channels_b))
            total += max(len(blocks_a | blocks_b), 1) + len(channels_b)
    return {"frames": len(frames), "max_rel_err": float(per_frame.max()), "mean_rel_err": float(per_frame.mean()),
            "max_abs_err": float(np.abs(half - reference).max()), "gate_decisions_differing": differing,
            "gate_decisions_compared": total}


def main(argv=None) -> None:
    from dynexport.compiler.pipeline import compile_model
    from dynexport.harness.clips import synthetic_clip
    from dynexport.loading import load_model

    parser = argparse.ArgumentParser(description="fp16 vs fp32 error of a model's segments over a synthetic clip")
    parser.add_argument("model")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--synthetic", default="mixed")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    compiled = compile_model(model, tuple(model.dynexport_input_shape))
    manifest = {"input": {"shape": list(compiled.input_shape), "normalization": {"scale": 1 / 255, "offset": 0.0}}}
    clip = synthetic_clip(args.synthetic, manifest, args.frames)
    print(measure(compiled, clip.frames, clip.resets))


if __name__ == "__main__":
    main()
