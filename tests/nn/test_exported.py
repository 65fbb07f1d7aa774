"""A ``.pt2`` program run as ``ExportedModel`` is the same streaming reference as the module it
was exported from: outputs, per-gate decisions, resets and rejected frames; and its dense
counterpart computes every block."""

import pytest
import torch
from torch import nn

import dynexport
from dynexport.errors import ExportError, FrameError
from dynexport.harness.dense import dense_counterpart
from dynexport.nn import DStepConv2d, ExportedModel, Residual, SkipConv2d, gated_layers
from dynexport.nn.exported import is_gate_node

SHAPE = (1, 3, 32, 32)


def gated_model():
    return nn.Sequential(
        SkipConv2d(3, 8, 3, stride=2, padding=1, gate="gumbel"), nn.ReLU(),
        Residual(nn.Sequential(SkipConv2d(8, 8, 3, padding=1, gate="input_norm", threshold=0.05), nn.ReLU())),
        DStepConv2d(8, 8, 3, padding=1, patch=4), nn.ReLU(),
        nn.Conv2d(8, 2, 1),
    ).eval()


def clip(frames=6):
    """A still background with a square moving right, a scene cut at frame 4."""
    background = torch.rand(3, 32, 32)
    out = []
    for t in range(frames):
        frame = (background if t < 4 else torch.rand(3, 32, 32)).clone()
        frame[:, 8:16, 4 + 3 * t:12 + 3 * t] = 1.0
        out.append(frame)
    return torch.stack(out)


@pytest.fixture
def model_and_program(tmp_path):
    model = gated_model()
    path = tmp_path / "model.pt2"
    dynexport.export(model, SHAPE, path)
    return model, torch.export.load(path)


def decisions(layer):
    found = layer.last_decisions
    return tuple(found) if isinstance(found, tuple) else (found,)


def test_streams_like_the_module_with_the_same_decisions(model_and_program):
    model, program = model_and_program
    exported = ExportedModel(program)
    assert [name for name, _ in gated_layers(exported)] == [name for name, _ in gated_layers(model)]
    dynexport.reset(model)
    dynexport.reset(exported)
    skipped = 0
    for t, frame in enumerate(clip()):
        want = dynexport.step(model, frame)
        got = dynexport.step(exported, frame)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=f"frame {t}")
        for (name, module_layer), (_, gate) in zip(gated_layers(model), gated_layers(exported)):
            for a, b in zip(decisions(gate), decisions(module_layer)):
                assert torch.equal(a, b), f"frame {t}, layer {name}"
        skipped += int(sum((~d).sum() for d in decisions(gated_layers(exported)[1][1])))
    assert skipped > 0  # the gates really skipped: the comparison covered both decisions


def test_reset_starts_a_new_stream(model_and_program):
    _, program = model_and_program
    exported = ExportedModel(program)
    frames = clip()
    first = list(dynexport.stream(exported, frames))
    dynexport.reset(exported)
    again = [dynexport.step(exported, frame) for frame in frames]
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_a_rejected_frame_leaves_the_state_as_it_was(model_and_program):
    _, program = model_and_program
    exported, fresh = ExportedModel(program), ExportedModel(program)
    frames = clip()
    list(dynexport.stream(exported, frames[:3]))
    list(dynexport.stream(fresh, frames[:3]))
    with pytest.raises(FrameError, match="NaN or Inf"):
        dynexport.step(exported, torch.full(SHAPE, float("nan")))
    with pytest.raises(FrameError, match="1x3x32x32"):
        dynexport.step(exported, torch.rand(1, 3, 16, 16))
    torch.testing.assert_close(dynexport.step(exported, frames[3]), dynexport.step(fresh, frames[3]), atol=0, rtol=0)


def test_streaming_leaves_the_program_as_exported(model_and_program):
    _, program = model_and_program
    before = {name: value.clone() for name, value in program.constants.items()}
    before.update({name: value.clone() for name, value in program.state_dict.items()})
    list(dynexport.stream(program, clip()))  # stream wraps a program itself
    after = {**program.constants, **program.state_dict}
    assert all(torch.equal(value, after[name]) for name, value in before.items())


def test_a_bare_program_or_training_is_refused_by_name(model_and_program):
    _, program = model_and_program
    with pytest.raises(ExportError, match="ExportedModel"):
        dynexport.reset(program)
    with pytest.raises(ExportError, match="eval semantics"):
        ExportedModel(program).train()


def test_dense_counterpart_of_a_program_computes_every_block(model_and_program):
    model, program = model_and_program
    dense = dense_counterpart(program)
    assert not any(is_gate_node(node) for node in dense.graph.nodes)
    x = torch.rand(SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(dense.module()(x), dense_counterpart(model)(x), atol=1e-6, rtol=0)
