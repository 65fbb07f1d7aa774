"""The ExecuTorch form of the D-STEP policy segment: equal to the reference policies
(dynexport.nn.dstep) and to the compiler's neutral DStepPolicySegment on patch grids that tile
the input, one-patch grids and grids of unequal pooling regions; substituted in every segment
the emitter exports without changing the compiled segments; and, lowered to ExecuTorch, one
XNNPACK partition with no portable op (no NHWC <-> NCHW copies) that runs and gives the
reference's numbers."""

import pytest
import torch

from torch import nn

from dynexport.compiler.passes.lower_dstep import PolicyAfterSegment
from dynexport.compiler.plan_builder import SegmentArtifact, example_tensor
from dynexport.compiler.segment_modules import ConvSegment, DStepPolicySegment
from dynexport.nn.dstep import channel_logits, spatial_logits
from dynexport.nn.skip_conv import make_grid
from targets.segment_forms.xnnpack_policies import (
    XnnpackDStepPolicySegment, adaptive_pooling_matrix, exact_pooling_kernel, with_xnnpack_policies,
)

OUT_CHANNELS = 5
# (channels, height, width, patch, stride): patch grids 4x4 (8x8 input per patch), 2x2 after a
# stride, 1x1, 1x4, and 3x4 of unequal, overlapping pooling regions (10 rows / 3, 14 columns / 4)
GRIDS = {"tiled": (16, 32, 32, 8, 1), "strided": (8, 32, 32, 8, 2), "one_patch": (12, 8, 8, 8, 1),
         "one_row": (4, 8, 32, 8, 1), "unequal": (6, 10, 14, 4, 1)}


def policy(name, seed=0):
    """(neutral segment module, input shape, reference policies: x, previous pooled, primed -> outputs)."""
    channels, height, width, patch, stride = GRIDS[name]
    g = torch.Generator().manual_seed(seed)
    grid = make_grid((1, channels, height, width), (OUT_CHANNELS, channels, 3, 3), (stride, stride), (1, 1), (1, 1),
                     patch)
    spatial = (torch.randn(2, 2, 3, 3, generator=g), torch.randn(2, generator=g))
    channel = (torch.randn(16, 2 * channels, generator=g), torch.randn(16, generator=g),
               torch.randn(3 * OUT_CHANNELS, 16, generator=g), torch.randn(3 * OUT_CHANNELS, generator=g))

    def reference(x, previous_pooled, primed):
        pooled = x.mean((2, 3))
        return (spatial_logits(x, grid, *spatial),
                channel_logits(pooled, previous_pooled if primed else pooled, *channel), pooled)

    return DStepPolicySegment(grid, spatial, channel, channels), (1, channels, height, width), reference



def test_exact_pooling_kernel_only_for_equal_regions():
    assert exact_pooling_kernel((32, 32), (4, 4)) == (8, 8)
    assert exact_pooling_kernel((8, 8), (1, 1)) == (8, 8)
    assert exact_pooling_kernel((10, 14), (3, 4)) is None
    assert exact_pooling_kernel((32, 30), (4, 4)) is None


@pytest.mark.parametrize("size, grid", [((10, 14), (3, 4)), ((7, 5), (2, 2)), ((9, 9), (2, 2))])
def test_adaptive_pooling_matrices_pool_like_adaptive_average_pooling(size, grid):
    features = torch.randn(1, 2, *size)
    rows, columns = (adaptive_pooling_matrix(s, g) for s, g in zip(size, grid))
    pooled = rows @ features @ columns.T
    torch.testing.assert_close(pooled, torch.nn.functional.adaptive_avg_pool2d(features, grid))


@pytest.mark.parametrize("primed", [0.0, 1.0])
@pytest.mark.parametrize("name", list(GRIDS))
def test_equals_the_reference_policies(name, primed):
    neutral, shape, reference = policy(name)
    module = with_xnnpack_policies(neutral)
    assert isinstance(module, XnnpackDStepPolicySegment)
    x = example_tensor(shape)
    previous_pooled = torch.randn(1, shape[1])
    got = module(x, previous_pooled, torch.tensor([primed]))
    expected_outputs = reference(x, previous_pooled, primed)
    neutral_outputs = neutral(x, previous_pooled, torch.tensor([primed]))
    assert len(got) == len(expected_outputs) == len(neutral_outputs) == 3
    for value, expected, from_neutral in zip(got, expected_outputs, neutral_outputs):
        assert value.shape == expected.shape == from_neutral.shape
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(from_neutral, expected, rtol=1e-6, atol=1e-6)


def test_substitution_reaches_appended_policies_and_leaves_the_compiled_segment_alone():
    neutral, shape, _ = policy("tiled")
    producer = ConvSegment(torch.randn(shape[1], 3, 3, 3), None, (1, 1), (1, 1), (1, 1), 1)  # returns a tuple
    fused = PolicyAfterSegment(producer, neutral, feature_index=0, producer_inputs=1)
    rewritten = with_xnnpack_policies(fused)
    assert rewritten is not fused
    assert isinstance(rewritten.policy, XnnpackDStepPolicySegment)
    assert fused.policy is neutral  # the compiled segment still holds the neutral form
    frame, previous_pooled, primed = torch.randn(1, 3, *shape[2:]), torch.randn(1, shape[1]), torch.ones(1)
    for value, expected in zip(rewritten(frame, previous_pooled, primed), fused(frame, previous_pooled, primed)):
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
    plain = nn.Sequential(nn.Conv2d(3, 3, 1))
    assert with_xnnpack_policies(plain) is plain  # nothing to substitute: not even copied


@pytest.mark.slow
def test_lowered_to_executorch_it_runs_in_xnnpack_alone():
    from executorch.exir._serialize._program import deserialize_pte_binary

    from targets.executorch import ExecuTorchSegments
    from targets.executorch.emitter import lower_segments

    artifacts, references = {}, {}
    for name in ("tiled", "one_patch", "unequal"):  # one of each path: lowering costs seconds a method
        module, shape, references[name] = policy(name)  # neutral: the emitter substitutes the XNNPACK form
        artifacts[name] = SegmentArtifact(name, module, (example_tensor(shape), torch.randn(1, shape[1]),
                                                         torch.ones(1)), kind="policy")
    pte = lower_segments(artifacts)
    # a method's operator table lists the kernels it calls outside its delegates
    for plan in deserialize_pte_binary(pte).program.execution_plan:
        assert [op.name for op in plan.operators] == [], f"{plan.name}: portable kernels"
        assert len(plan.delegates) == 1, f"{plan.name}: {len(plan.delegates)} XNNPACK partitions"

    segments = ExecuTorchSegments(pte)
    for name, artifact in artifacts.items():
        x, previous_pooled = artifact.example_inputs[0], artifact.example_inputs[1]
        for primed in (0.0, 1.0):
            got = segments.run(name, [x, previous_pooled, torch.tensor([primed])])
            for value, expected in zip(got, references[name](x, previous_pooled, primed)):
                torch.testing.assert_close(value.contiguous(), expected.contiguous(), rtol=1e-4, atol=1e-4,
                                           msg=f"{name}, primed {primed}")
