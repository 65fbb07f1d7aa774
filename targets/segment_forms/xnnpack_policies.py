"""The XNNPACK form of the D-STEP policy segment (ExecuTorch's and LiteRT's emitters): D-STEP's two policies written in
ops the XNNPACK delegate runs end to end, channels_last (NHWC), substituted by
``with_xnnpack_policies`` for the compiler's target-neutral ``DStepPolicySegment``
(``dynexport/compiler/segment_modules.py``) in every segment before it is exported.

The reference (``dynexport.nn.dstep.spatial_logits`` / ``channel_logits``), which the neutral
segment runs as it is, reduces over channels (``x.mean(1)``), averages globally with
``keepdim=False``, pools adaptively and selects the previous pooled input with
``torch.where``. XNNPACK takes none of those: they ran as ExecuTorch portable kernels, each
behind an NHWC -> NCHW copy of the whole feature map. Measured on dstep_action's first policy (16 x 32 x 32 input, 1 thread): three such
copies (217 us each) and three portable means (54-89 us) made 880 of the segment's 1000 us.

Here instead, for an input x [1, C, H, W] whose patch grid tiles it exactly:

* pooled input: ``x.mean((2, 3), keepdim=True)`` (XNNPACK's global average pooling);
* spatial features: average-pool x and x*x to the patch grid first (kernel = stride = the
  patch's input extent, equal to the adaptive pooling regions when they tile the input),
  then average over channels with a 1x1 convolution of weight 1/C on that small map:
  pooling and channel averaging are both linear, so their order is free, and a 1x1
  convolution with one output channel at full resolution would waste most of its GEMM;
* channel policy: the previous pooled input is selected by arithmetic on ``primed``;
* a one-patch grid computes its spatial logits in rank 2 (``_one_patch_logits``).

A grid that does not tile the input (adaptive regions of unequal size, or overlapping) has
no average pool equal to it: there the channels are averaged first (1x1 convolution to the
two-channel mean/energy map), then the regions' columns and rows, each by a linear layer whose
rows are the regions' averaging weights. Not the portable adaptive pooling: its NCHW result
and the NHWC input in one XNNPACK partition fail at run time ("Propagating input shapes
failed"), and it would bring the layout copies back.

Invariants: the outputs and their shapes are the reference's, equal up to float rounding
(summation order); the previous-input selection is exact because the runtime keeps
``primed`` at exactly 0.0 (first frame after a reset) or 1.0; lowered to ExecuTorch, the
segment is one XNNPACK partition with no portable kernel
(tests/targets/test_xnnpack_policies.py); ``with_xnnpack_policies`` never changes
the module it is given (the compiled segments are shared by every backend of a build and by
the plan interpreter).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynexport.compiler.segment_modules import DStepPolicySegment
from dynexport.nn.block_grid import BlockGrid


def exact_pooling_kernel(input_size: tuple[int, int], grid_blocks: tuple[int, int]) -> tuple[int, int] | None:
    """The average-pooling kernel (= stride) equal to adaptive average pooling from
    ``input_size`` to ``grid_blocks``, or None when the adaptive regions differ in size.
    Adaptive region i spans [floor(i*H/rows), ceil((i+1)*H/rows)): all regions are the same
    disjoint H/rows rows exactly when rows divides H (likewise for columns)."""
    if any(size % blocks for size, blocks in zip(input_size, grid_blocks)):
        return None
    return tuple(size // blocks for size, blocks in zip(input_size, grid_blocks))


def with_xnnpack_policies(module: nn.Module) -> nn.Module:
    """``module``, or, when it holds a ``DStepPolicySegment`` (a policy segment, or one
    appended to a dense segment), a copy in which each is replaced by its XNNPACK form."""
    if isinstance(module, DStepPolicySegment):
        return XnnpackDStepPolicySegment.from_reference(module)
    policies = [name for name, child in module.named_modules() if isinstance(child, DStepPolicySegment)]
    if not policies:
        return module
    rewritten = copy.deepcopy(module)
    for name in policies:
        rewritten.set_submodule(name, XnnpackDStepPolicySegment.from_reference(rewritten.get_submodule(name)))
    return rewritten


class XnnpackDStepPolicySegment(nn.Module):
    """D-STEP's policies for one frame: (spatial logits [1,2,rows,cols])?, (channel logits
    [1,Co,3])?, pooled input [1,C]. ``primed`` [1] is 0 on the first frame after a reset,
    where the previous pooled input is taken to be the current one, and 1 otherwise.

    Every weight the forward uses is a buffer prepared here: a weight sliced or reshaped in
    the forward stays a runtime op, and a linear layer over a computed weight falls back to
    a portable matmul outside the delegate."""

    def __init__(self, grid: BlockGrid, spatial, channel, in_channels: int):
        super().__init__()
        self.grid = grid
        self.has_spatial = spatial is not None
        self.has_channel = channel is not None
        self.one_patch = tuple(grid.blocks) == (1, 1)
        self.pooling_kernel = exact_pooling_kernel(grid.input_size, grid.blocks)
        if spatial is not None:
            weight, bias = spatial[0].detach(), spatial[1].detach()
            if tuple(weight.shape) != (2, 2, 3, 3):
                raise ValueError(f"D-STEP spatial policy: expected a 2->2 3x3 kernel, got {tuple(weight.shape)}")
            average = _channel_average_weight(in_channels)
            if self.one_patch:
                # on a 1x1 map the 3x3 convolution (padding 1) reads only its centre tap
                self.register_buffer("spatial_weight", weight[:, :, 1, 1].clone())
                self.register_buffer("channel_average_weight", average.flatten(1))
            else:
                self.register_buffer("spatial_weight", weight.clone())
                self.register_buffer("channel_average_weight", average)
            if self.pooling_kernel is None:
                self.register_buffer("row_average_weight", adaptive_pooling_matrix(grid.input_size[0], grid.blocks[0]))
                self.register_buffer("column_average_weight",
                                     adaptive_pooling_matrix(grid.input_size[1], grid.blocks[1]))
            self.register_buffer("spatial_bias", bias.clone())
        if channel is not None:
            for name, value in zip(("w1", "b1", "w2", "b2"), channel):
                self.register_buffer(f"channel_{name}", value.detach().clone())

    @classmethod
    def from_reference(cls, reference: DStepPolicySegment) -> "XnnpackDStepPolicySegment":
        return cls(reference.grid, reference.spatial_parameters(), reference.channel_parameters(),
                   reference.in_channels)

    def forward(self, x: Tensor, previous_pooled: Tensor, primed: Tensor):
        # keepdim=True over H and W: the one form of mean XNNPACK delegates (global pooling)
        pooled = x.mean((2, 3), keepdim=True).flatten(1)
        outputs = []
        if self.has_spatial:
            outputs.append(self._one_patch_logits(x, pooled) if self.one_patch else self._patch_logits(x))
        if self.has_channel:
            # exact for primed in {0, 1}: 1*a + 0*b == a and 0*a + 1*b == b for finite a, b
            previous = primed * previous_pooled + (1.0 - primed) * pooled
            hidden = F.relu(F.linear(torch.cat([pooled, previous], 1), self.channel_w1, self.channel_b1))
            outputs.append(F.linear(hidden, self.channel_w2, self.channel_b2).reshape(1, -1, 3))
        outputs.append(pooled)
        return tuple(outputs)

    def _one_patch_logits(self, x: Tensor, pooled: Tensor) -> Tensor:
        """Spatial logits [1, 2, 1, 1] of a one-patch grid, computed in rank 2 and reshaped
        last. Why: XNNPACK mislabels a 4-D output of one position and two channels (NCHW
        and NHWC are the same bytes there) and refuses to run it ("Attempted to resize a
        static tensor. Expected shape (1, 2, 1, 1), but received (1, 1, 2, 1)")."""
        energy = (x * x).mean((2, 3), keepdim=True).flatten(1)
        features = F.linear(torch.cat([pooled, energy], 1), self.channel_average_weight)
        return F.linear(features, self.spatial_weight, self.spatial_bias).reshape(1, 2, 1, 1)

    def _patch_logits(self, x: Tensor) -> Tensor:
        """[1, C, H, W] -> [1, 2, rows, cols]: the 3x3 convolution over the channel mean and
        the channel mean of squares of x, averaged over each patch's adaptive pooling region."""
        if self.pooling_kernel is not None:
            kernel = self.pooling_kernel
            pooled_patches = torch.cat([F.avg_pool2d(x, kernel, kernel), F.avg_pool2d(x * x, kernel, kernel)], 1)
            features = F.conv2d(pooled_patches, self.channel_average_weight)
        else:
            features = F.conv2d(torch.cat([x, x * x], 1), self.channel_average_weight)
            # a region is a rectangle: its average is the average over its rows of the
            # average over its columns
            features = F.linear(features, self.column_average_weight)  # [1, 2, H, cols]
            features = F.linear(features.transpose(2, 3), self.row_average_weight).transpose(2, 3)
        return F.conv2d(features, self.spatial_weight, self.spatial_bias, padding=1)


def adaptive_pooling_matrix(size: int, regions: int) -> Tensor:
    """[regions, size]: row i averages adaptive pooling region i of an axis of ``size``
    positions, [floor(i*size/regions), ceil((i+1)*size/regions)), as ``F.linear`` weights."""
    matrix = torch.zeros(regions, size)
    for i in range(regions):
        start, end = (i * size) // regions, -((-(i + 1) * size) // regions)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _channel_average_weight(channels: int) -> Tensor:
    """1x1 convolution weight [2, 2C, 1, 1] mapping cat(a, b) over channels to
    (mean of a's channels, mean of b's channels). The zero half of each row adds exact
    zeros, so the result is the two channel means up to summation order."""
    weight = torch.zeros(2, 2 * channels, 1, 1)
    weight[0, :channels] = 1.0 / channels
    weight[1, channels:] = 1.0 / channels
    return weight
