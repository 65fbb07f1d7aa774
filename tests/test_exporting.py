"""``dynexport.export`` and the export that ``build`` runs: the one step at the shape that gate
state needs, the named error when ``torch.export.export`` is called without it, and pruning's
"assigned during export" warning silenced (and only that one)."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import dynexport
from dynexport.compiler.frontend import export_graph
from dynexport.errors import CompileError, ExportError
from dynexport.loading import load_model
from dynexport.nn import DStepConv2d, SkipConv2d

SHAPE = (1, 3, 24, 24)


class TwoGates(nn.Module):
    """A class of the user's own (not allow-listed for safe loading)."""

    def __init__(self):
        super().__init__()
        self.first = SkipConv2d(3, 4, 3, padding=1, block=8)
        self.second = DStepConv2d(4, 4, 3, padding=1, patch=8)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


class KeepsATensorAttribute(nn.Module):
    """Assigns a tensor attribute in forward: state torch.export drops, which must still warn."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.last = None

    def forward(self, x):
        self.last = x.mean()
        return self.conv(x)


def test_export_writes_a_pt2_that_loads_and_streams_like_the_model(tmp_path):
    model = TwoGates().eval()
    path = tmp_path / "model.pt2"
    returned = dynexport.export(model, "1x3x24x24", path)
    loaded = load_model(path)
    assert isinstance(loaded, torch.export.ExportedProgram) and isinstance(returned, torch.export.ExportedProgram)
    frames = torch.rand(4, 3, 24, 24)
    frames[2:] = frames[1]
    for t, (want, got) in enumerate(zip(dynexport.stream(model, frames), dynexport.stream(loaded, frames))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=f"frame {t}")


def test_export_refuses_a_shape_it_cannot_build(tmp_path):
    with pytest.raises(CompileError, match=r"\(1, C, H, W\)"):
        dynexport.export(TwoGates(), (2, 3, 24, 24), tmp_path / "model.pt2")
    with pytest.raises(CompileError, match="does not run on a 1x4x24x24 input"):
        dynexport.export(TwoGates(), (1, 4, 24, 24), tmp_path / "model.pt2")
    assert not (tmp_path / "model.pt2").exists()


def test_reset_then_torch_export_names_dynexport_export():
    model = TwoGates().eval()
    dynexport.reset(model)
    with pytest.raises(ExportError, match=r"layer 'first'.*1x3x24x24.*dynexport\.export\(model, input_shape, path\)"):
        torch.export.export(model, (torch.zeros(SHAPE),))


def test_state_of_another_shape_is_the_same_error():
    model = TwoGates().eval()
    dynexport.step(model, torch.zeros(1, 3, 16, 16))
    dynexport.reset(model)
    with pytest.raises(ExportError, match="not allocated for a 1x3x24x24 input"):
        torch.export.export(model, (torch.zeros(SHAPE),))


def assigned_warnings(caught):
    return [str(w.message) for w in caught if "assigned during export" in str(w.message)]


def test_pruning_warning_is_silenced_where_build_exports():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), SkipConv2d(4, 4, 3, padding=1))
    prune.l1_unstructured(model[0], "weight", 0.5)
    prune.l1_unstructured(model[2].conv, "weight", 0.5)
    prune.l1_unstructured(model[2].conv, "weight", 0.2)  # twice: a PruningContainer
    dynexport.step(model.eval(), torch.zeros(SHAPE))
    dynexport.reset(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.export.export(model, (torch.zeros(SHAPE),))
    assert assigned_warnings(caught)  # torch does warn for pruned weights on a plain export
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_graph(model, SHAPE)
    assert assigned_warnings(caught) == []


def test_other_assigned_tensor_attributes_still_warn():
    model = KeepsATensorAttribute()
    prune.l1_unstructured(model.conv, "weight", 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_graph(model, SHAPE)
    assert [message for message in assigned_warnings(caught) if "self.last" in message]
