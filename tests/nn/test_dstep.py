"""DStepConv2d reference semantics: decisions applied per patch and per channel exactly as
documented, reuse returns the previous frame's channel, training reduces the MAC loss."""

import pytest
import torch

import dynexport
from dynexport.errors import FrameError
from dynexport.nn import DStepConv2d, mac_loss
from dynexport.nn.dstep import COMPUTE, REUSE, SKIP


def force_channel_decisions(layer: DStepConv2d, decisions):
    """Make the channel policy's argmax the given per-channel decision, whatever the input."""
    with torch.no_grad():
        layer.channel_policy.fc2.weight.zero_()
        bias = torch.full((len(decisions), 3), -10.0)
        bias[torch.arange(len(decisions)), torch.tensor(decisions)] = 10.0
        layer.channel_policy.fc2.bias.copy_(bias.flatten())


def test_reuse_returns_previous_frame_channel_skip_is_zero_compute_is_conv():
    layer = DStepConv2d(3, 4, 3, padding=1, spatial=False, channel=True).eval()
    force_channel_decisions(layer, [COMPUTE, REUSE, SKIP, REUSE])
    x0, x1 = torch.randn(1, 3, 12, 12), torch.randn(1, 3, 12, 12)
    dynexport.reset(layer)
    y0 = dynexport.step(layer, x0)
    # first frame: reuse has nothing to reuse and computes
    torch.testing.assert_close(y0[:, [0, 1, 3]], layer.conv(x0)[:, [0, 1, 3]])
    assert y0[:, 2].abs().max() == 0
    y1 = dynexport.step(layer, x1)
    torch.testing.assert_close(y1[:, 0], layer.conv(x1)[:, 0])
    torch.testing.assert_close(y1[:, 1], y0[:, 1], atol=0, rtol=0)
    torch.testing.assert_close(y1[:, 3], y0[:, 3], atol=0, rtol=0)
    assert y1[:, 2].abs().max() == 0
    patch_mask, decision = layer.last_decisions
    assert decision.tolist() == [[COMPUTE, REUSE, SKIP, REUSE]]
    assert layer.last_stats.active_fraction == pytest.approx(0.25)


@pytest.mark.parametrize("size", [(16, 16), (21, 19)])
@pytest.mark.parametrize("stride", [1, 2])
def test_skipped_patches_are_zero_and_computed_patches_exact(size, stride):
    layer = DStepConv2d(3, 5, 3, stride=stride, padding=1, spatial=True, channel=False, patch=4).eval()
    with torch.no_grad():  # decide by brightness: bright patches compute
        layer.spatial_policy.conv.weight.zero_()
        layer.spatial_policy.conv.weight[1, 0, 1, 1] = 10.0
        layer.spatial_policy.conv.bias.copy_(torch.tensor([0.0, -5.0]))
    x = torch.zeros(1, 3, *size)
    x[..., : size[0] // 2, :] = 1.0
    dynexport.reset(layer)
    y = dynexport.step(layer, x)
    patch_mask, _ = layer.last_decisions
    assert 0 < patch_mask.float().mean() < 1
    dense = layer.conv(x)
    out_h, out_w = dense.shape[-2:]
    rows, cols = -(-out_h // 4), -(-out_w // 4)
    for r in range(rows):
        for c in range(cols):
            got = y[..., r * 4:(r + 1) * 4, c * 4:(c + 1) * 4]
            want = dense[..., r * 4:(r + 1) * 4, c * 4:(c + 1) * 4]
            if patch_mask[0, r * cols + c]:
                torch.testing.assert_close(got, want)
            else:
                assert got.abs().max() == 0


def test_default_policies_start_by_computing_everything():
    layer = DStepConv2d(4, 8, 3, padding=1).eval()
    x = torch.randn(1, 4, 16, 16)
    frames = list(dynexport.stream(layer, [x, x + 0.1]))
    torch.testing.assert_close(frames[1], layer.conv(x + 0.1), atol=1e-6, rtol=0)


def test_training_step_reduces_mac_loss():
    layer = DStepConv2d(4, 8, 3, padding=1, patch=4)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    clip = [torch.randn(4, 4, 16, 16) for _ in range(3)]

    def mac_fraction():
        torch.manual_seed(7)
        dynexport.reset(layer)
        layer.train()
        for x in clip:
            layer(x)
        return mac_loss(layer)

    before = mac_fraction()
    for _ in range(3):
        loss = mac_fraction()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert mac_fraction().item() < before.item()


def test_rejects_bad_frames_without_touching_state():
    layer = DStepConv2d(3, 4, 3, padding=1).eval()
    dynexport.reset(layer)
    dynexport.step(layer, torch.randn(1, 3, 16, 16))
    before = {k: v.clone() for k, v in layer.state_snapshot().items()}
    for frame in (torch.full((1, 3, 16, 16), float("inf")), torch.randn(1, 3, 8, 16), torch.randn(1, 2, 16, 16)):
        with pytest.raises(FrameError):
            dynexport.step(layer, frame)
        for name, value in layer.state_snapshot().items():
            torch.testing.assert_close(value, before[name])


def test_constructor_rejects_no_policy():
    with pytest.raises(ValueError, match="at least one"):
        DStepConv2d(3, 4, 3, spatial=False, channel=False)
