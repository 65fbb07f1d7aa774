"""order_dstep_channels: the reordered model is the original up to a permutation of each D-STEP
layer's output channels (outputs within 1e-5, decisions permuted, on a stream it was not
calibrated on), the plan's channel groups of the reordered model idle where the original's
ran, and the structures it cannot rewrite are refused by name."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import dynexport
from dynexport import video
from dynexport.compiler.pipeline import compile_model
from dynexport.gating import ChannelOrderError, order_dstep_channels
from dynexport.nn import DStepConv2d, Residual, SkipConv2d
from dynexport.plan.frame_program import Op
from dynexport.plan.interpreter import FrameProgramInterpreter, TorchSegments
from tests.compiler.conftest import randomize_batchnorms

COMPUTE = 2


def dstep(cin, cout, **kw):
    return DStepConv2d(cin, cout, 3, padding=1, patch=4, **kw)


def decisive(model):
    """Policies that decide something, and differently from frame to frame."""
    torch.manual_seed(0)
    randomize_batchnorms(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DStepConv2d):
                m.spatial_policy.conv.weight.normal_(0, 0.2)
                m.spatial_policy.conv.bias.copy_(torch.tensor([0.0, 2.0]))
                m.channel_policy.fc1.weight.normal_(0, 2)
                m.channel_policy.fc2.weight.normal_(0, 2)
                m.channel_policy.fc2.bias.normal_(0, 1)
    return model.eval()


def coupled_model():
    """The example's block (D-STEP -> BatchNorm -> ReLU -> conv, with a conv shortcut), a block
    whose body *ends* in a D-STEP layer added to its input (so the previous block's output, its
    body's last conv and BatchNorm and its shortcut are permuted alike), a D-STEP consumer (its
    channel policy's input columns and pooled state) and a linear head after global pooling."""
    torch.manual_seed(0)
    return decisive(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        Residual(nn.Sequential(dstep(8, 16, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                               nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)),
                 nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16))),
        Residual(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), dstep(16, 16), nn.BatchNorm2d(16))),
        dstep(16, 24), nn.BatchNorm2d(24), nn.ReLU(),
        dstep(24, 16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)))


def clip(seed, frames=40, height=32, width=40):
    return torch.from_numpy(video.generate("mixed", seed=seed, height=height, width=width, frames=frames).as_float())


def stream(model, frames):
    layers = [m for m in model.modules() if isinstance(m, DStepConv2d)]
    outputs, decisions = [], []
    dynexport.reset(model)
    with torch.no_grad():
        for frame in frames:
            outputs.append(dynexport.step(model, frame[None]).clone())
            decisions.append([(m.last_decisions[0][0].clone(), m.last_decisions[1][0].clone()) for m in layers])
    dynexport.reset(model)
    return outputs, decisions


def test_reordered_model_is_the_original_up_to_the_permutation_on_another_stream():
    model = coupled_model()
    result = order_dstep_channels(model, clip(seed=1))
    assert result.model is not model and result.max_relative_error <= 1e-5
    orders = [torch.tensor(layer.order) for layer in result.layers]
    assert [layer.name for layer in result.layers] == ["2.body.0", "3.body.2", "4", "7"]
    assert all(not torch.equal(order, torch.arange(len(order))) for order in orders), "every layer must be reordered"
    frames = clip(seed=0)
    before, before_decisions = stream(model, frames)
    after, after_decisions = stream(result.model, frames)
    changing = 0
    for t, (a, b) in enumerate(zip(before, after)):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max(), f"frame {t}"
        for order, (patches, channels), (patches_after, channels_after) in zip(
                orders, before_decisions[t], after_decisions[t]):
            assert torch.equal(patches, patches_after)
            assert torch.equal(channels_after, channels[order]), f"frame {t}"
        changing += t > 0 and any(not torch.equal(c, p[1]) for (_, c), p in zip(
            before_decisions[t], before_decisions[t - 1]))
    assert changing > 0, "the stream must exercise changing channel decisions"
    # most computing first: the shares (weighted by kept patches) do not increase along the order
    for layer in result.layers:
        assert all(a >= b for a, b in zip(layer.compute_share, layer.compute_share[1:]))
        assert abs(sum(layer.compute_share) - 1) < 1e-6 or sum(layer.compute_share) == 0


def test_inplace_reorders_the_given_model_and_checks_against_it_before_the_change():
    model = coupled_model()
    frames = clip(seed=1, frames=8)
    expected, _ = stream(model, frames)
    result = order_dstep_channels(model, frames, inplace=True)
    assert result.model is model
    got, _ = stream(model, frames)
    assert all((a - b).abs().max() <= 1e-5 * a.abs().max() for a, b in zip(expected, got))


class CountingSegments(TorchSegments):
    """Runs the segments in torch and counts the calls per segment name."""

    def __init__(self, segments):
        super().__init__(segments)
        self.calls = {}

    def run(self, name, inputs):
        self.calls[name] = self.calls.get(name, 0) + 1
        return super().run(name, inputs)


def scattered_compute_model():
    """One D-STEP layer of 64 channels (4 plan groups of 16 at 48x48) whose channel policy
    always computes every fourth channel, reuses the next and skips the others: every
    contiguous group holds computing channels, and they would fit in one."""
    torch.manual_seed(0)
    model = randomize_batchnorms(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), DStepConv2d(8, 64, 3, padding=1, patch=8), nn.BatchNorm2d(64),
        nn.ReLU(), nn.Conv2d(64, 8, 1)))
    policy = model[2].channel_policy.fc2
    with torch.no_grad():
        policy.weight.zero_()
        logits = torch.zeros(64, 3)
        logits[0::4, COMPUTE] = 5.0
        logits[1::4, 1] = 5.0
        logits[2::4, 0] = logits[3::4, 0] = 5.0
        policy.bias.copy_(logits.flatten())
    return model.eval()


def group_calls(model, frames, shape):
    compiled = compile_model(model, shape)
    groups = [(i.c, i.d) for i in compiled.program.instructions if i.op == Op.BRANCH_IF_GROUP_IDLE]
    runner = CountingSegments(compiled.segments)
    interpreter = FrameProgramInterpreter(compiled.program, runner)
    interpreter.reset()
    outputs = [interpreter.step(frame[None]) for frame in frames]
    calls = sum(n for name, n in runner.calls.items() if "_tiles_c" in name or "_dense_c" in name)
    return groups, calls, outputs


def test_lowered_groups_idle_after_the_reordering():
    shape = (1, 3, 48, 48)
    model = scattered_compute_model()
    frames = clip(seed=0, frames=6, height=48, width=48)
    result = order_dstep_channels(model, clip(seed=1, frames=6, height=48, width=48))
    # the computing channels first, then the reusing ones (they compute on frame 0, which has
    # no previous frame to reuse), then the skipped
    [layer] = result.layers
    assert layer.order == [*range(0, 64, 4), *range(1, 64, 4), *sorted([*range(2, 64, 4), *range(3, 64, 4)])]
    assert layer.groups == [(0, 16), (16, 16), (32, 16), (48, 16)]
    assert layer.channels_run_before == 64 and layer.channels_run_after == (32 + 16 * 5) / 6
    groups, calls_before, before = group_calls(model, frames, shape)
    groups_after, calls_after, after = group_calls(result.model, frames, shape)
    assert groups == groups_after == [(0, 16), (16, 16), (32, 16), (48, 16)] * 2  # tile path, dense path
    # before: every group has a computing channel on every frame; after: 2 groups on frame 0, then 1
    assert calls_before == 4 * len(frames)
    assert calls_after == 2 + (len(frames) - 1)
    expected, _ = stream(model, frames)
    for a, b, c in zip(before, after, expected):
        assert (a - c).abs().max() <= 1e-4 and (b - c).abs().max() <= 1e-4


@pytest.mark.parametrize("build, message", [
    (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), dstep(8, 8)),
     "'1': its output channels reach the model output"),
    (lambda: nn.Sequential(dstep(3, 8), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 1)),
     "module '1' (output side) is a GroupNorm with per-channel tensors"),
    (lambda: nn.Sequential(dstep(3, 8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 2, 1)),
     "module '2' (input side) is a grouped convolution (groups=2)"),
    (lambda: nn.Sequential(dstep(3, 8), nn.ReLU(), SkipConv2d(8, 4, 3, padding=1)),
     "module '2' (input side) is a SkipConv2d"),
    (lambda: nn.Sequential(nn.Conv2d(3, 8, 1), Residual(dstep(8, 8), dstep(8, 8)), nn.Conv2d(8, 2, 1)),
     "D-STEP layers '1.body' and '1.shortcut' produce coupled channels"),
    (lambda: nn.Sequential(nn.Conv2d(3, 8, 1)),
     "no DStepConv2d with a channel policy"),
])
def test_structures_it_cannot_rewrite_are_refused_by_name(build, message):
    model = decisive(build())
    with pytest.raises(ChannelOrderError) as error:
        order_dstep_channels(model, clip(seed=1, frames=3, height=16, width=16))
    assert message in str(error.value)


def test_a_pruning_mask_is_refused():
    model = decisive(nn.Sequential(dstep(3, 8), nn.ReLU(), nn.Conv2d(8, 2, 1)))
    torch_prune.l1_unstructured(model[2], "weight", amount=0.5)
    with pytest.raises(ChannelOrderError, match="'2' carries a torch.nn.utils.prune mask"):
        order_dstep_channels(model, clip(seed=1, frames=2, height=16, width=16))


def test_bad_frames_are_named():
    model = decisive(nn.Sequential(dstep(3, 8), nn.ReLU(), nn.Conv2d(8, 2, 1)))
    with pytest.raises(ChannelOrderError, match=r"expected float32 \[T, C, H, W\]"):
        order_dstep_channels(model, np.zeros((3, 16, 16), np.float32))
