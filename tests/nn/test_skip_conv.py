"""SkipConv2d reference semantics, checked against a naive block-by-block implementation
written independently of the vectorized one, and against the properties the semantics
promise (first frame dense, unchanged frame free, threshold 0 is dense, drift recomputes)."""

import pytest
import torch
import torch.nn.functional as F

import dynexport
from dynexport.errors import FrameError
from dynexport.nn import SkipConv2d

LAYOUTS = {
    "plain": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    "stride2": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    "no_padding": dict(in_channels=4, out_channels=5, kernel_size=3),
    "dilation2": dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2),
    "depthwise": dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6),
    "pointwise": dict(in_channels=4, out_channels=8, kernel_size=1),
    "5x5_stride2": dict(in_channels=3, out_channels=4, kernel_size=5, stride=2, padding=2),
}
SIZES = [(16, 16), (21, 19)]  # a multiple of the block and not


def naive_skip_conv(frames, layer: SkipConv2d):
    """Block loop over explicit input windows: the semantics as the docstring states them."""
    conv = layer.conv
    k = conv.weight.shape[-1]
    s, p, d = conv.stride[0], conv.padding[0], conv.dilation[0]
    b = layer.block
    outputs, masks = [], []
    reference, previous = {}, None
    for t, x in enumerate(frames):
        dense = conv(x)
        out_h, out_w = dense.shape[-2:]
        rows, cols = -(-out_h // b), -(-out_w // b)
        padded = F.pad(x, (p, p + b * s + d * k, p, p + b * s + d * k))
        y = dense.clone() if previous is None else previous.clone()
        mask = torch.zeros(rows, cols, dtype=torch.bool)
        for r in range(rows):
            for c in range(cols):
                positions = [(i, j) for i in range(r * b, min((r + 1) * b, out_h)) for j in range(c * b, min((c + 1) * b, out_w))]
                tile = padded[..., r * b * s:r * b * s + (b - 1) * s + d * (k - 1) + 1,
                              c * b * s:c * b * s + (b - 1) * s + d * (k - 1) + 1]
                if t == 0:
                    active = True
                else:
                    residual = tile - reference[r, c]
                    scores = []
                    for i, j in positions:
                        li, lj = (i - r * b) * s, (j - c * b) * s
                        window = residual[..., li:li + d * (k - 1) + 1:d, lj:lj + d * (k - 1) + 1:d]
                        if layer.gate == "gumbel":
                            logit = (window.abs() * layer.gate_conv.weight[0]).sum() - F.softplus(layer.gate_bias)[0]
                            scores.append(torch.sigmoid(logit))
                        else:
                            norm = window.square().sum().sqrt()
                            if layer.gate == "output_norm":
                                norm = norm * conv.weight.flatten(1).norm(dim=1).max()
                            scores.append(norm)
                    active = bool(max(scores) > layer.threshold)
                if active:
                    reference[r, c] = tile.clone()
                    for i, j in positions:
                        y[..., i, j] = dense[..., i, j]
                mask[r, c] = active
        previous = y
        outputs.append(y)
        masks.append(mask)
    return outputs, masks


def moving_square_clip(frames=6, size=(16, 16), channels=4, step=2):
    torch.manual_seed(1)
    background = torch.randn(1, channels, *size) * 0.2
    clip = []
    for t in range(frames):
        x = background.clone()
        top = 2 + (t * step) % max(1, size[0] - 6)
        x[..., top:top + 4, 1:5] += 1.5
        clip.append(x)
    return clip


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("gate", ["input_norm", "output_norm", "gumbel"])
def test_matches_naive_block_loop(layout, size, gate):
    layer = SkipConv2d(**LAYOUTS[layout], gate=gate, threshold=0.5, block=4).eval()
    if gate == "gumbel":
        with torch.no_grad():
            layer.gate_conv.weight.uniform_(0.0, 0.3)
    clip = moving_square_clip(size=size, channels=layer.conv.in_channels)
    with torch.no_grad():
        want, want_masks = naive_skip_conv(clip, layer)
        got = list(dynexport.stream(layer, clip, with_stats=True))
    for t, ((y, stats), y_want, mask) in enumerate(zip(got, want, want_masks)):
        torch.testing.assert_close(y, y_want, atol=1e-5, rtol=0, msg=f"frame {t}")
        assert stats.layers[0].active_fraction == pytest.approx(mask.float().mean().item()), f"frame {t}"
    fractions = [s.layers[0].active_fraction for _, s in got]
    assert fractions[0] == 1.0 and min(fractions[1:]) < 1.0, "the clip must exercise skipped blocks"


def test_first_frame_is_dense_and_identical_frame_is_free():
    layer = SkipConv2d(4, 6, 3, padding=1, block=4).eval()
    x = torch.randn(1, 4, 20, 20)
    dynexport.reset(layer)
    y0 = dynexport.step(layer, x)
    torch.testing.assert_close(y0, layer.conv(x), atol=0, rtol=0)
    y1 = dynexport.step(layer, x.clone())
    assert layer.last_stats.active_fraction == 0.0
    assert layer.last_stats.executed_macs == layer.last_stats.gate_macs
    torch.testing.assert_close(y1, y0, atol=0, rtol=0)


@pytest.mark.parametrize("layout", ["plain", "stride2", "depthwise", "dilation2"])
def test_threshold_zero_equals_dense_on_every_frame(layout):
    layer = SkipConv2d(**LAYOUTS[layout], threshold=0.0, block=4).eval()
    clip = moving_square_clip(frames=8, size=(21, 19), channels=layer.conv.in_channels)
    with torch.no_grad():
        for t, y in enumerate(dynexport.stream(layer, clip)):
            torch.testing.assert_close(y, layer.conv(clip[t]), atol=1e-6, rtol=0, msg=f"frame {t}")


def test_slow_drift_eventually_recomputes_every_block():
    layer = SkipConv2d(3, 4, 3, padding=1, threshold=0.5, block=4).eval()
    base = torch.rand(1, 3, 16, 16)
    recomputed = torch.zeros(16, dtype=torch.bool)
    dynexport.reset(layer)
    for t in range(200):
        x = base * (1 + 0.002 * t)  # every pixel drifts a little each frame
        y = dynexport.step(layer, x)
        if t > 0:
            recomputed |= layer.last_decisions[0]
        # error stays bounded by what the threshold allows: never unbounded staleness
        assert (y - layer.conv(x)).abs().max() < 1.0
    assert bool(recomputed.all()), "every block must be recomputed once its drift crosses the threshold"


def test_rejected_frames_leave_state_untouched():
    layer = SkipConv2d(4, 6, 3, padding=1, block=4).eval()
    clip = moving_square_clip(frames=3)
    dynexport.reset(layer)
    dynexport.step(layer, clip[0])
    before = {k: v.clone() for k, v in layer.state_snapshot().items()}
    bad_frames = {
        "NaN": torch.full_like(clip[1], float("nan")),
        "shape": torch.randn(1, 4, 12, 16),
        "channels": torch.randn(1, 3, 16, 16),
        "dtype": clip[1].double(),
        "rank": torch.randn(4, 16),
    }
    for what, frame in bad_frames.items():
        with pytest.raises(FrameError) as info:
            layer(frame)
        message = str(info.value)
        assert "SkipConv2d" in message or "layer" in message, what
        for name, value in layer.state_snapshot().items():
            torch.testing.assert_close(value, before[name], msg=f"{what} changed {name}")
    # the next good frame behaves as if the bad ones never came
    fresh = SkipConv2d(4, 6, 3, padding=1, block=4).eval()
    fresh.load_state_dict(layer.state_dict())
    dynexport.reset(fresh)
    dynexport.step(fresh, clip[0])
    torch.testing.assert_close(dynexport.step(layer, clip[1]), dynexport.step(fresh, clip[1]), atol=0, rtol=0)


def test_error_names_the_layer_inside_a_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), SkipConv2d(4, 4, 3, padding=1)).eval()
    dynexport.reset(model)
    dynexport.step(model, torch.randn(1, 3, 16, 16))
    with pytest.raises(FrameError, match=r"layer '1'.*changed from \(1, 4, 16, 16\) to \(1, 4, 8, 8\)"):
        dynexport.step(model, torch.randn(1, 3, 8, 8))


def test_gumbel_training_step_reduces_mac_loss():
    layer = SkipConv2d(3, 4, 3, padding=1, gate="gumbel", block=4)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    clip = [torch.rand(8, 3, 16, 16) * 0.1 for _ in range(4)]

    def mac_fraction():
        torch.manual_seed(123)  # the same Gumbel noise before and after
        dynexport.reset(layer)
        layer.train()
        for x in clip:
            layer(x)
        return dynexport.nn.mac_loss(layer)

    before = mac_fraction()
    optimizer.zero_grad()
    before.backward()
    assert layer.gate_bias.grad is not None and layer.gate_bias.grad.abs().item() > 0
    optimizer.step()
    after = mac_fraction()
    assert after.item() < before.item()


def test_batch_items_are_independent_streams():
    layer = SkipConv2d(4, 6, 3, padding=1, block=4).eval()
    clip = moving_square_clip(frames=4)
    still = [clip[0]] * 4
    pairs = [torch.cat([a, b]) for a, b in zip(clip, still)]
    def run(frames):
        outputs, masks = [], []
        for y in dynexport.stream(layer, frames):
            outputs.append(y)
            masks.append(layer.last_decisions)
        return outputs, masks

    with torch.no_grad():
        together, together_masks = run(pairs)
        alone_a, masks_a = run(clip)
        alone_b, masks_b = run(still)
    for t in range(4):
        # batched and single convolutions may round differently in the last bit
        torch.testing.assert_close(together[t][0:1], alone_a[t], atol=1e-5, rtol=0)
        torch.testing.assert_close(together[t][1:2], alone_b[t], atol=1e-5, rtol=0)
        assert torch.equal(together_masks[t][0], masks_a[t][0])
        assert torch.equal(together_masks[t][1], masks_b[t][0])
    assert not masks_b[3].any() and masks_a[3].any()
