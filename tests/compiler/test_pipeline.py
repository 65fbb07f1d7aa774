"""compile_model's pass record: only the passes that changed something, in order; a failing
pass reported with every pass that ran before it; and the neutral segments it hands to the
backends (segment kinds as plan_builder documents them, the D-STEP policies in the
reference's own form)."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import dynexport.compiler.pipeline as pipeline
from dynexport.compiler.pipeline import compile_model
from dynexport.compiler.plan_builder import SegmentArtifact, SegmentKind, example_tensor
from dynexport.errors import CompileError
from dynexport.nn import DStepConv2d, SkipConv2d

SHAPE = (1, 3, 16, 16)


def test_a_plain_model_records_only_the_partition():
    compiled = compile_model(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval(), SHAPE)
    assert compiled.passes == ["partition_at_gates"]


def test_skip_conv_model_records_its_lowering_and_not_dsteps():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), SkipConv2d(4, 4, 3, padding=1)).eval()
    compiled = compile_model(model, SHAPE)
    assert compiled.passes == ["fold_batchnorm", "partition_at_gates", "lower_skip_conv"]


def test_dstep_model_records_its_lowering_and_not_skip_convs():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), DStepConv2d(4, 6, 3, padding=1, patch=4)).eval()
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    compiled = compile_model(model, SHAPE)
    assert compiled.passes == ["fold_constants", "partition_at_gates", "lower_dstep"]


def test_both_gates_are_recorded_once_in_the_order_they_first_ran():
    model = nn.Sequential(DStepConv2d(3, 4, 3, padding=1, patch=4), SkipConv2d(4, 4, 3, padding=1),
                          DStepConv2d(4, 4, 3, padding=1, patch=4)).eval()
    assert compile_model(model, SHAPE).passes == ["partition_at_gates", "lower_dstep", "lower_skip_conv"]


def test_a_failing_graph_pass_names_the_passes_that_ran_before_it(monkeypatch):
    def rewrite_nothing_then_fail(gm):
        raise RuntimeError("injected")

    monkeypatch.setattr(pipeline, "GRAPH_PASSES", (pipeline.fold_constants, pipeline.fold_batchnorm,
                                                   rewrite_nothing_then_fail))
    with pytest.raises(CompileError, match=r"pass rewrite_nothing_then_fail failed \(after fold_constants, "
                                           r"fold_batchnorm\): RuntimeError: injected"):
        compile_model(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), SHAPE)


def test_a_failing_lowering_names_the_passes_and_lowerings_before_it(monkeypatch):
    def lower_dstep(builder, step, gm, dense_cutoff):
        raise ValueError("injected")

    monkeypatch.setattr(pipeline, "lower_dstep", lower_dstep)
    model = nn.Sequential(SkipConv2d(3, 4, 3, padding=1), DStepConv2d(4, 4, 3, padding=1, patch=4)).eval()
    with pytest.raises(CompileError, match=r"pass lower_dstep failed \(after fold_constants, fold_batchnorm, "
                                           r"check_supported_ops, partition_at_gates, fuse_pointwise_epilogue, "
                                           r"lower_skip_conv\)"):
        compile_model(model, SHAPE)


def test_a_users_compile_error_passes_through_unchanged():
    class Cumulative(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=2)

    with pytest.raises(CompileError, match=r"^unsupported op\(s\)"):
        compile_model(nn.Sequential(nn.Conv2d(3, 3, 1), Cumulative()).eval(), SHAPE)


def test_segment_kinds_are_the_documented_ones():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), DStepConv2d(4, 6, 3, padding=1, patch=4),
                          DStepConv2d(6, 6, 3, padding=1, patch=4)).eval()
    kinds = {name: artifact.kind for name, artifact in compile_model(model, SHAPE).segments.items()}
    assert set(kinds.values()) <= set(SegmentKind)
    # D-STEP policies are no segment: the runtime computes them (DSTEP_POLICY)
    assert kinds == {"segment_0": SegmentKind.DENSE, "layer_1_tiles": SegmentKind.TILES,
                     "layer_1_dense": SegmentKind.DENSE, "layer_2_tiles": SegmentKind.TILES,
                     "layer_2_dense": SegmentKind.DENSE}
    assert kinds["layer_1_tiles"] == "tiles"  # a str: what is written is what is compared
    with pytest.raises(ValueError):
        SegmentArtifact("bad", nn.Identity(), (example_tensor((1, 3)),), kind="sparse")
