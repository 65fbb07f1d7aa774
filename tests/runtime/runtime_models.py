"""Models, clips and plans the native-runtime tests share.

Every model is compiled once per test session (``compiled``); the small models are those
of tests/plan/test_interpreter.py plus D-STEP with one policy each, and two dense cut-off
extremes (every active frame dense / every count on the tile path).
"""

from __future__ import annotations

import functools
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dynexport import video
from dynexport.compiler.pipeline import DEFAULT_DENSE_CUTOFF, compile_model
from dynexport.gating.change_driven import make_change_driven
from dynexport.nn import DStepConv2d, SkipConv2d
from dynexport.plan.frame_program import Artifact
from tests.plan import test_interpreter as interpreter_tests

REPO = Path(__file__).resolve().parents[2]
SMALL_INPUT = (1, 3, 37, 45)  # not a multiple of any block size: partial border blocks everywhere

# The artifact record the C tests look for (tests/test_dynrt.c: TEST_ARTIFACT, backend
# name "dynrt_test"): plans written for them carry it, so the artifact check runs too.
TEST_ARTIFACT = b"dynrt test artifact v1"


def _dstep_one_policy(spatial: bool):
    return lambda: nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        DStepConv2d(8, 8, 3, padding=1, patch=4, spatial=spatial, channel=not spatial), nn.ReLU(),
        nn.Conv2d(8, 2, 1))


def dstep_forced_channels(channels: int = 64, spatial: bool = True) -> nn.Module:
    """A D-STEP layer of ``channels`` outputs (channel groups of 16: lower_dstep) whose channel
    policy is forced (fc2 weights 0, biases 5 apart): the first half skips, the next quarter
    reuses, the last quarter computes; so half the groups skip, a quarter reuse (they compute
    only on a frame after a reset) and a quarter run. The spatial policy decides per patch."""
    torch.manual_seed(0)
    layer = DStepConv2d(8, channels, 3, padding=1, patch=4, spatial=spatial)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), layer, nn.ReLU(), nn.Conv2d(channels, 2, 1)).eval()
    with torch.no_grad():
        layer.channel_policy.fc2.weight.zero_()
        bias = torch.zeros(channels, 3)
        quarter = channels // 4
        bias[: 2 * quarter, 0] = 5.0
        bias[2 * quarter: 3 * quarter, 1] = 5.0
        bias[3 * quarter:, 2] = 5.0
        layer.channel_policy.fc2.bias.copy_(bias.flatten())
        if spatial:
            layer.spatial_policy.conv.weight.normal_(0, 5)
            layer.spatial_policy.conv.bias.zero_()
    return model


EXTRA_MODELS = {
    "dstep_spatial_only": _dstep_one_policy(spatial=True),
    "dstep_channel_only": _dstep_one_policy(spatial=False),
    "dstep_channel_groups": dstep_forced_channels,  # forced policies (make_model leaves them)
}

# name -> (model name, dense cut-off[, dense fallback, hold]): cut-off 0 leaves only the dense path, 1 only tiles
SMALL_MODELS = {name: (name, DEFAULT_DENSE_CUTOFF) for name in [*interpreter_tests.MODELS, *EXTRA_MODELS]}
SMALL_MODELS["depthwise_chain_dense_only"] = ("depthwise_chain", 0.0)
SMALL_MODELS["residual_gumbel_tiles_only"] = ("residual_gumbel", 1.0)
# (model name, dense cut-off, dense fallback, its hold): above 30 % of the first layer's blocks
DENSE_FALLBACK = 0.3
SMALL_MODELS["depthwise_chain_dense_fallback"] = ("depthwise_chain", DEFAULT_DENSE_CUTOFF, DENSE_FALLBACK, 0)
SMALL_MODELS["residual_norm_dense_fallback_hold"] = ("residual_norm", DEFAULT_DENSE_CUTOFF, DENSE_FALLBACK, 2)

EXAMPLES = ("skipconv_heatmap", "dstep_action")


def make_model(name: str) -> nn.Module:
    if name in interpreter_tests.MODELS:
        return interpreter_tests.make_model(name)
    torch.manual_seed(0)
    model = EXTRA_MODELS[name]().eval()
    if name == "dstep_channel_groups":
        return model
    for m in model.modules():
        if isinstance(m, DStepConv2d):  # make the policies decide something, as test_interpreter does
            with torch.no_grad():
                if m.spatial_policy is not None:
                    m.spatial_policy.conv.weight.normal_(0, 5)
                    m.spatial_policy.conv.bias.zero_()
                if m.channel_policy is not None:
                    m.channel_policy.fc2.bias.normal_(0, 1)
        if isinstance(m, SkipConv2d) and m.gate == "gumbel":
            with torch.no_grad():
                m.gate_conv.weight.uniform_(0.0, 0.4)
    return model


@functools.lru_cache(maxsize=None)
def compiled_small(key: str):
    """(reference model, CompiledModel) of SMALL_MODELS[key]; compiled once per session. The
    reference is the model as built: its convolutions the plan gates at threshold 0 gated so
    (gating/change_driven.py), as verify loads it."""
    name, cutoff, fallback, hold = (*SMALL_MODELS[key], None, 0)[:4]
    model = make_model(name)
    compiled = compile_model(model, SMALL_INPUT, dense_cutoff=cutoff, dense_fallback=fallback, dense_fallback_hold=hold)
    return make_change_driven(model, compiled.change_driven), compiled


@functools.lru_cache(maxsize=None)
def compiled_example(name: str):
    from dynexport.loading import load_model

    model = load_model(REPO / "examples" / name / "model.pt")
    compiled = compile_model(model, model.dynexport_input_shape)
    return make_change_driven(model, compiled.change_driven), compiled


def plan_bytes(compiled, with_test_artifact: bool = False) -> bytes:
    program = compiled.program
    saved = list(program.artifacts)
    if with_test_artifact:
        program.artifacts = saved + [Artifact("dynrt_test", len(TEST_ARTIFACT), zlib.crc32(TEST_ARTIFACT))]
    try:
        return program.to_bytes()
    finally:
        program.artifacts = saved


def clip(preset: str, height: int, width: int, frames: int, seed: int = 0, **overrides) -> torch.Tensor:
    """[T, 3, H, W] float32 frames of a dynexport.video preset (Scene fields overridable)."""
    return torch.from_numpy(video.generate(preset, seed=seed, height=height, width=width, frames=frames,
                                           **overrides).as_float())


def to_nhwc(frame: torch.Tensor) -> np.ndarray:
    """[1, C, H, W] torch -> contiguous float32 NHWC numpy (the runtime's layout)."""
    return np.ascontiguousarray(frame.permute(0, 2, 3, 1).numpy())


def from_physical(array: np.ndarray) -> torch.Tensor:
    """A runtime output (NHWC for 4-D) -> the model's logical layout (NCHW)."""
    tensor = torch.from_numpy(array)
    return tensor.permute(0, 3, 1, 2) if tensor.dim() == 4 else tensor
