"""dynexport.stream / step / reset / frame_stats on whole models."""

import numpy as np
import pytest
import torch
from torch import nn

import dynexport
from dynexport.errors import FrameError
from dynexport.nn import Residual, SkipConv2d


def two_layer_model():
    return nn.Sequential(
        SkipConv2d(3, 8, 3, padding=1, threshold=0.2, block=4), nn.ReLU(),
        Residual(nn.Sequential(SkipConv2d(8, 8, 3, padding=1, threshold=0.2, block=4))),
    ).eval()


def test_stream_accepts_tensor_numpy_and_iterators():
    model = two_layer_model()
    clip = torch.rand(4, 3, 16, 16)
    a = list(dynexport.stream(model, clip))
    b = list(dynexport.stream(model, clip.numpy()))
    c = list(dynexport.stream(model, iter([f for f in clip])))
    for x, y, z in zip(a, b, c):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
        torch.testing.assert_close(x, z, atol=0, rtol=0)
    assert a[0].shape == (1, 8, 16, 16)


def test_frame_stats_names_layers_and_counts_macs():
    model = two_layer_model()
    clip = torch.rand(3, 3, 16, 16)
    clip[2] = clip[1]
    stats = [s for _, s in dynexport.stream(model, clip, with_stats=True)]
    assert list(stats[0].active_fraction) == ["0", "2.body.0"]
    assert stats[0].executed_macs == stats[0].dense_macs == 16 * 16 * (8 * 3 * 9 + 8 * 8 * 9)
    assert all(v == 0.0 for v in stats[2].active_fraction.values())
    assert stats[2].executed_macs == sum(layer.gate_macs for layer in stats[2].layers) > 0


def test_a_bad_frame_deep_in_the_model_restores_every_layer():
    model = two_layer_model()
    clip = torch.rand(3, 3, 16, 16)
    dynexport.reset(model)
    dynexport.step(model, clip[0])
    first = model[0]
    before = [{k: v.clone() for k, v in m.state_snapshot().items()} for m in (first, model[2].body[0])]

    def poison(module, args):  # the second gated layer sees a non-finite input
        return (args[0] * float("inf"),)

    handle = model[2].body[0].register_forward_pre_hook(poison)
    with pytest.raises(FrameError, match=r"layer '2\.body\.0'.*NaN or Inf"):
        dynexport.step(model, clip[1])
    handle.remove()
    for m, snapshot in zip((first, model[2].body[0]), before):
        for name, value in m.state_snapshot().items():
            torch.testing.assert_close(value, snapshot[name], msg=name)


@pytest.mark.parametrize(
    "frame, message",
    [
        (torch.rand(3, 16, 16).to(torch.uint8), "float32.*frame.float"),
        (torch.rand(16, 16), r"\[C, H, W\]"),
        (torch.rand(1, 4, 16, 16), "3 channels"),
        ("not a frame", "torch.Tensor or numpy"),
        (np.full((3, 16, 16), np.nan, np.float32), "NaN or Inf"),
    ],
)
def test_step_rejects_bad_frames_with_a_named_reason(frame, message):
    model = two_layer_model()
    with pytest.raises(FrameError, match=message):
        dynexport.step(model, frame)


def test_reset_makes_the_next_frame_dense():
    model = two_layer_model()
    clip = torch.rand(2, 3, 16, 16)
    list(dynexport.stream(model, clip))
    dynexport.reset(model)
    dynexport.step(model, clip[1])
    assert all(v == 1.0 for v in dynexport.frame_stats(model).active_fraction.values())


def test_dense_fallback_holds_for_its_frames_and_a_bad_frame_changes_nothing():
    """A busy first layer (every block of a new scene) makes the second layer compute densely
    and forget; with hold 2 the two calm frames after it fall back too, the third does not. A
    rejected frame in between leaves the hold where it was. Bad settings are refused."""
    from dynexport.streaming import DenseFallback

    model = two_layer_model()
    second = model[2].body[0]
    calm = torch.zeros(3, 16, 16)
    busy = torch.rand(3, 16, 16)
    fallback = DenseFallback(0.5, hold=2)
    dynexport.reset(model)
    dynexport.step(model, calm, fallback)  # a first frame: every block, so it falls back
    dynexport.step(model, calm, fallback)  # held 1
    assert not bool(second.primed) and bool(second.last_decisions.all())
    dynexport.step(model, calm, fallback)  # held 2
    assert not bool(second.primed)
    dynexport.step(model, calm, fallback)  # calm, no hold left: the second layer keeps its state
    assert bool(second.primed)
    dynexport.step(model, busy, fallback)
    assert not bool(second.primed)
    with pytest.raises(FrameError):
        dynexport.step(model, torch.full((3, 16, 16), float("nan")), fallback)
    for _ in range(2):  # still two held frames
        dynexport.step(model, busy, fallback)  # the same frame again: calm
        assert not bool(second.primed)
    dynexport.step(model, busy, fallback)
    assert bool(second.primed)
    with pytest.raises(ValueError, match="fraction"):
        DenseFallback(1.0)
    with pytest.raises(ValueError, match="hold"):
        DenseFallback(0.5, hold=-1)


@pytest.mark.parametrize("skips_gate", [True, False])
def test_a_held_frame_computes_the_first_layer_unscored_and_counts_down_without_looking(skips_gate):
    """2.4 (hold_skips_gate): a held frame is dense through and through, the first layer
    included (every block, no gate MACs), and a busy held frame does not start the hold
    again. A 2.3 plan's hold scores the first layer: the busy held frame restarts the hold."""
    from dynexport.streaming import DenseFallback

    model = two_layer_model()
    first, second = model[0], model[2].body[0]
    fallback = DenseFallback(0.5, hold=1, hold_skips_gate=skips_gate)
    scene = torch.rand(3, 16, 16)
    dynexport.reset(model)
    dynexport.step(model, torch.zeros(3, 16, 16), fallback)  # a first frame: busy, holds 1
    dynexport.step(model, scene, fallback)  # held, and busy
    assert bool(first.last_decisions.all())
    assert (first.last_stats.gate_macs == 0) == skips_gate
    dynexport.step(model, scene, fallback)  # calm: falls back only if the busy held frame restarted the hold
    assert bool(second.primed) == skips_gate
    assert int(first.last_decisions.sum()) == 0
