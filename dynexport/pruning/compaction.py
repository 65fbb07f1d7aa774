"""Structured pruning realized: channels that carry zero everywhere are physically removed.

``compact(model, input_shape)`` returns a copy of ``model`` whose convolutions, linear layers,
BatchNorms, gated layers and everything coupled to them (residual adds, concatenations,
depthwise convolutions) have lost every channel that is provably zero, with the coupling found
by torch-pruning's dependency graph (``torch_pruning.DependencyGraph``), not by hand.

A channel of a pruning group is removed only when every layer that produces it produces zero
there: its output weights and bias are zero, a BatchNorm maps zero to zero (shift and scale
of the channel zero, the output of ``torch.nn.utils.prune``-style group masks), and no layer
in the group is one whose pruner cannot keep the result exact (``gated_pruners.blocked_reason``).
Channels of layers that feed the model's output are kept (the output shape is the model's
contract). Invariant: the compacted model's output equals the input model's, which is checked
on random frames before the result is returned (``CompactionResult.max_difference``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from dynexport.errors import CompileError
from dynexport.nn import GatedLayer
from dynexport.pruning.gated_pruners import (CUSTOMIZED_PRUNERS, DEPTHWISE_STAND_INS, blocked_reason,
                                             depthwise_stand_ins, forget_traced_state)
from dynexport.pruning.layer_macs import LayerSize, layer_sizes
from dynexport.pruning.reparametrization import copy_without_masks

# outputs of the compacted and the original model on the same frames may differ by rounding
# only: removing zero terms changes the order of a float sum, nothing else
EQUAL_TOLERANCE = 1e-5
# a channel is zero when its weights are exactly 0 (masks multiply by 0.0)
ZERO = 0.0


@dataclasses.dataclass
class CompactionResult:
    model: nn.Module
    before: dict[str, LayerSize]
    after: dict[str, LayerSize]
    removed_channels: int
    kept_zero_channels: dict[str, str]  # group root -> why its zero channels stay
    max_difference: float

    @property
    def changed(self) -> bool:
        return self.removed_channels > 0


def zero_channels(model: nn.Module) -> int:
    """How many output channels of convolutions / linear layers (gated layers included) have
    all-zero weights: 0 means there is nothing to compact."""
    count = 0
    for module in model.modules():
        conv = module.conv if isinstance(module, GatedLayer) else module
        if isinstance(conv, (nn.Conv2d, nn.Linear)):
            # with a torch.nn.utils.prune mask, ``weight`` is the masked tensor of the last forward
            weight = conv.weight.detach()
            count += int((weight.reshape(weight.shape[0], -1) == ZERO).all(1).sum())
    return count


def compact(model: nn.Module, input_shape, check_frames: int = 2, seed: int = 0) -> CompactionResult:
    """Remove the zero channels of a copy of ``model`` (see the module docstring)."""
    import dynexport

    reference = model
    compacted = copy_without_masks(model).eval()
    before = layer_sizes(compacted, input_shape)
    dynexport.reset(compacted)
    with depthwise_stand_ins(compacted):
        removed, kept = _remove_zero_channels(compacted, input_shape)
    dynexport.reset(compacted)
    difference = max_output_difference(reference, compacted, input_shape, check_frames, seed)
    if difference > EQUAL_TOLERANCE:
        raise CompileError(f"structured pruning: the compacted model differs from the masked one by {difference:.3g} "
                           f"(more than {EQUAL_TOLERANCE}); an op between the pruned layers does not keep a zero "
                           f"channel zero (e.g. sigmoid or adding a constant). Build without zeroed channels there")
    return CompactionResult(compacted, before, layer_sizes(compacted, input_shape), removed, kept, difference)


def _remove_zero_channels(compacted: nn.Module, input_shape) -> tuple[int, dict[str, str]]:
    import torch_pruning as tp

    try:
        graph = tp.DependencyGraph().build_dependency(
            compacted, example_inputs=torch.randn(tuple(input_shape)),
            customized_pruners=CUSTOMIZED_PRUNERS, verbose=False)
    except Exception as exc:  # torch-pruning traces autograd: a model it cannot trace is not compacted
        raise CompileError(f"structured pruning: torch-pruning could not trace the model's channel "
                           f"dependencies ({type(exc).__name__}: {exc}); remove the zero channels yourself "
                           f"or build the model without pruning masks") from exc
    forget_traced_state(compacted)
    output_layers = _output_layers(graph)
    removed, kept = 0, {}
    roots = (nn.Conv2d, nn.Linear, *CUSTOMIZED_PRUNERS)
    for group in graph.get_all_groups(ignored_layers=output_layers, root_module_types=roots):
        root_name = graph._module2name.get(group[0].dep.target.module, "?")
        removable, reason = _removable_root_indices(graph, group)
        if reason is not None:
            if removable:
                kept[root_name] = reason
            continue
        total = graph.get_out_channels(group[0].dep.target.module)
        if len(removable) >= total:
            removable = removable[1:]  # a layer keeps at least one channel
        if removable:
            group.prune(idxs=removable)
            removed += len(removable)
    return removed, kept


def max_output_difference(first: nn.Module, second: nn.Module, input_shape, frames: int, seed: int) -> float:
    """Largest absolute output difference over ``frames`` streamed random frames (the second
    and later frames exercise the gates' reuse of the previous frame)."""
    import dynexport

    generator = torch.Generator().manual_seed(seed)
    clip = torch.rand((frames, *tuple(input_shape)), generator=generator)
    worst = 0.0
    for model in (first, second):
        dynexport.reset(model)
    with torch.no_grad():
        for frame in clip:
            worst = max(worst, float((first.eval()(frame) - second.eval()(frame)).abs().max()))
    for model in (first, second):
        dynexport.reset(model)
    return worst


def _output_layers(graph) -> list[nn.Module]:
    """Prunable layers whose output channels reach the model output without passing through
    another layer that mixes channels (conv, linear, gated; a depthwise one does not mix)."""
    import torch_pruning as tp

    mixing = (tp.ops.OPTYPE.CONV, tp.ops.OPTYPE.LINEAR, tp.ops.OPTYPE.DEPTHWISE_CONV, tp.ops.OPTYPE.CUSTOMIZED)
    found = []
    for module, node in graph.module2node.items():
        if node.type not in mixing or not isinstance(module, nn.Module):
            continue
        stack, seen = list(node.outputs), set()
        reaches_output = not node.outputs
        while stack and not reaches_output:
            current = stack.pop()
            passes_through = current.type == tp.ops.OPTYPE.DEPTHWISE_CONV or isinstance(current.module,
                                                                                       DEPTHWISE_STAND_INS)
            if id(current) in seen or (current.type in mixing and not passes_through):
                continue
            seen.add(id(current))
            if not current.outputs:
                reaches_output = True
            stack.extend(current.outputs)
        if reaches_output:
            found.append(module)
    return found


def _removable_root_indices(graph, group) -> tuple[list[int], str | None]:
    """Root channel indices every producer in the group zeroes, and why they must stay (or None)."""
    zero_by_root: dict[int, bool] = {}
    reason = None
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        output_side = graph.is_out_channel_pruning_fn(handler)
        blocked = blocked_reason(module, input_side=not output_side) if isinstance(module, nn.Module) else None
        if blocked is not None:
            reason = reason or f"{graph._module2name.get(module, type(module).__name__)}: {blocked}"
        if not output_side:
            continue  # dropping an input that is zero is exact
        for idx, root in zip(item.idxs, item.root_idxs):
            is_zero = _produces_zero(module, item.dep.target, int(idx))
            if is_zero is None:  # blocks the group; the producers still say which channels are zero
                reason = reason or (f"{module!r} in the group: an op that may not keep a zero channel zero, "
                                    f"or a layer dynexport cannot compact")
                continue
            zero_by_root[int(root)] = zero_by_root.get(int(root), True) and is_zero
    removable = sorted(root for root, zero in zero_by_root.items() if zero)
    return removable, reason


# autograd ops (torch-pruning's _ElementWiseOp names them by grad_fn) that map a zero
# channel to zero, and so pass it through a group untouched; any other op blocks the group
ZERO_PRESERVING_OPS = ("Relu", "Add", "Sub", "Mul", "Upsample", "MaxPool", "AvgPool", "AdaptiveAvgPool", "Hardtanh",
                       "LeakyRelu", "Gelu", "Silu", "Hardswish", "Elu", "Clone", "Neg", "Threshold", "Mean",
                       "Permute", "Transpose", "Unsqueeze", "Squeeze", "View", "Constant", "Pad", "Dropout",
                       # torch 2.13 on CPU runs some nn.Conv2d as unsqueeze -> convolution -> squeeze:
                       # the inner convolution node is the consuming layer's own, reached before its
                       # module output, and torch-pruning shows it as an element-wise op
                       "Convolution")
# channel bookkeeping nodes of torch-pruning: no arithmetic at all
BOOKKEEPING_OPS = ("_ConcatOp", "_SplitOp", "_UnbindOp", "_ReshapeOp", "_SliceOp", "_ExpandOp", "_OutputOp")


def _produces_zero(module, node, idx: int) -> bool | None:
    """Whether output channel ``idx`` of ``module`` is zero for every input whose channel
    ``idx`` is zero (None: a module kind this cannot tell)."""
    kind = type(module).__name__
    if kind in BOOKKEEPING_OPS:
        return True
    if kind == "_ElementWiseOp":
        name = str(module._grad_fn)
        return True if any(name.startswith(op) for op in ZERO_PRESERVING_OPS) else None
    with torch.no_grad():
        if isinstance(module, GatedLayer):
            module = module.conv
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            zero = bool((module.weight[idx] == ZERO).all())
            return zero and (module.bias is None or float(module.bias[idx]) == ZERO)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not module.affine or not module.track_running_stats:
                return False
            scale = module.weight[idx] / torch.sqrt(module.running_var[idx] + module.eps)
            return float(module.bias[idx] - module.running_mean[idx] * scale) == ZERO
        if isinstance(module, nn.Parameter):
            return bool((module.detach().index_select(node.pruning_dim, torch.tensor([idx])) == ZERO).all())
    return None
