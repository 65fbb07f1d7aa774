"""order_dstep_channels: reorder each D-STEP layer's output channels by how often they compute
on a calibration clip, so that the plan's channel groups (``lower_dstep.channel_groups``:
contiguous output channels, each its own segment, run only when one of its channels computes)
hold channels that compute together, and groups of channels that rarely compute stay idle.

Invariant: the returned model computes what the original did. A permutation ``order`` of a
layer's output channels (new channel k is old channel ``order[k]``) is applied to everything
sized by those channels, found by torch-pruning's dependency graph (the coupled layers a
channel removal would touch, with dynexport's gated pruners): the convolution's weight rows and
bias and the channel policy's per-channel logits (``fc2`` rows, three per channel) on the
producing side; BatchNorm parameters and running statistics, and the input channels of every
consumer (a convolution's weight columns, a D-STEP consumer's channel-policy ``fc1`` columns
for the current and the previous pooled input, a linear layer's columns), through residual
adds and concatenations (where the other operand's producer is permuted alike). The model is
returned reset (``dynexport.reset``: no reuse or pooled state to permute; the next frame is a
first frame, as after any reset). So on every frame each layer's decisions are the original's up to the
permutation (``new[k] == old[order[k]]``; a spatial policy averages over channels, which a
permutation leaves unchanged) and the model's output equals the original's up to float
rounding (summation order). This is checked on the calibration clip before the model is
returned (``ChannelOrderError`` when it does not hold).

What it refuses (``ChannelOrderError``, naming the module): a layer whose reordered channels
reach the model output without passing a layer that mixes channels (the output would come out
permuted); a coupled module it cannot permute (a grouped, non-depthwise convolution; a
SkipConv2d, whose gate state is per input tile; a depthwise D-STEP layer; any other module with
parameters, e.g. a GroupNorm); a ``torch.nn.utils.prune`` mask (its ``weight_orig``); a flatten
that spreads one channel over several features; two D-STEP layers coupled to the same channels
(ordering one would reorder the other). Layers without a channel policy or with ``groups != 1``
are left as they are: ``lower_dstep`` does not split them into groups.

The order is by compute frequency weighted by the patches the layer keeps on that frame (what
the plan runs: a frame whose patches are all skipped costs nothing whatever the channels do),
most frequent first, ties in the original order. Measured on examples/dstep_action/
model_budget.pt at 150x200 (calibrated on static_camera seed 1, run on seed 0, today's groups):
the MACs the plan runs fall from 256.1 M to 192.1 M per frame (the decisions need 173.3 M), 77 %
of the gap; the D-STEP decisions of that model are nearly fixed per channel, so the
calibration clip matters little (sorted on the evaluation clip itself: the same 192.1 M).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from dynexport.errors import DynexportError
from dynexport.nn import DStepConv2d, GatedLayer
from dynexport.nn.dstep import COMPUTE

# outputs of the reordered model may differ from the original's by summation order only
RELATIVE_TOLERANCE = 1e-5


class ChannelOrderError(DynexportError, ValueError):
    """A model whose D-STEP channels cannot be reordered exactly (names the module and why)."""


@dataclasses.dataclass
class LayerOrder:
    name: str
    order: list[int]  # new output channel k is the original channel order[k]
    compute_share: list[float]  # per new channel: its share of the layer's computed (patch, channel) pairs
    groups: list[tuple[int, int]]  # the channel groups lower_dstep makes of this layer at the clip's shape
    # over the frames where the layer runs (a kept patch, a computing channel), per frame: the
    # channels computing, and the channels of the groups that run, before and after the reordering
    frames_run: int
    channels_computing: float
    channels_run_before: float
    channels_run_after: float


@dataclasses.dataclass
class ChannelOrdering:
    model: nn.Module
    layers: list[LayerOrder]
    frames: int
    max_relative_error: float  # reordered vs original output on the calibration clip


def order_dstep_channels(model: nn.Module, frames, resets=(0,), inplace: bool = False) -> ChannelOrdering:
    """``model`` with each D-STEP layer's output channels ordered by compute frequency on
    ``frames`` (float32 [T, C, H, W], a tensor or array, streamed with a reset before each
    frame in ``resets``); a copy unless ``inplace``. See the module docstring for the invariant
    and what is refused."""
    import dynexport

    frames = torch.as_tensor(np.ascontiguousarray(frames), dtype=torch.float32)
    if frames.ndim != 4 or len(frames) == 0:
        raise ChannelOrderError(f"calibration frames: expected float32 [T, C, H, W] with T >= 1, got {list(frames.shape)}")
    for name, module in model.named_modules():
        if hasattr(module, "weight_orig"):
            raise ChannelOrderError(f"module {name!r} carries a torch.nn.utils.prune mask (weight_orig): "
                                    "call torch.nn.utils.prune.remove first, or build the pruned model as it is")
    ordered = model if inplace else copy.deepcopy(model)
    ordered.eval()
    layers = [(name, m) for name, m in ordered.named_modules()
              if isinstance(m, DStepConv2d) and m.channel_policy is not None and m.conv.groups == 1]
    if not layers:
        raise ChannelOrderError("the model has no DStepConv2d with a channel policy (and groups=1): nothing to order")
    # the original's decisions and outputs, before anything is permuted (``ordered`` may be ``model``)
    reference, original_outputs = _stream(model, frames, resets, [name for name, _ in layers], with_outputs=True)
    weights = {name: _weighted_compute(decisions) for name, decisions in reference.items()}
    orders = {name: np.argsort(-weights[name], kind="stable") for name, _ in layers}

    plan = _permutation_plan(ordered, frames[:1], {m: orders[name] for name, m in layers})
    with torch.no_grad():
        for module, side, index in plan:
            _permute(module, side, torch.as_tensor(index, dtype=torch.long))
    dynexport.reset(ordered)

    check, outputs = _stream(ordered, frames, resets, [name for name, _ in layers], with_outputs=True)
    error = _check_equivalent(reference, check, orders, original_outputs, outputs)
    result = []
    for name, module in layers:
        share = weights[name][orders[name]]
        groups = _plan_groups(module)
        run = [(p, c) for p, c in reference[name] if p and (c == COMPUTE).any()]
        after = [(p, c) for p, c in check[name] if p and (c == COMPUTE).any()]
        result.append(LayerOrder(
            name, [int(c) for c in orders[name]], [float(s) for s in share / max(float(share.sum()), 1e-12)],
            groups, len(run), _mean([int((c == COMPUTE).sum()) for _, c in run]),
            _mean([_channels_run(c, groups) for _, c in run]), _mean([_channels_run(c, groups) for _, c in after])))
    return ChannelOrdering(ordered, result, len(frames), error)


def _plan_groups(module: DStepConv2d) -> list[tuple[int, int]]:
    """The layer's channel groups as lower_dstep makes them at the shape it last ran at."""
    from dynexport.compiler.passes.lower_dstep import channel_groups

    grid = module.block_grid(module._input_shape[-2:])
    dense_macs = grid.output_size[0] * grid.output_size[1] * module.conv.out_channels * module.macs_per_output()
    return channel_groups(module.conv.out_channels, dense_macs=dense_macs)


def _channels_run(decisions: np.ndarray, groups) -> int:
    return sum(count for first, count in groups if (decisions[first:first + count] == COMPUTE).any())


def _mean(values) -> float:
    return float(np.mean(values)) if values else 0.0


def _stream(model, frames, resets, names, with_outputs=False):
    """Per named D-STEP layer, per frame (kept patches, channel decisions); and the outputs."""
    import dynexport

    modules = dict(model.named_modules())
    decisions = {name: [] for name in names}
    outputs = []
    dynexport.reset(model)
    with torch.no_grad():
        for t, frame in enumerate(frames):
            if t in resets:
                dynexport.reset(model)
            out = dynexport.step(model, frame[None])
            if with_outputs:
                outputs.append(out.detach().clone())
            for name in names:
                patches, channels = modules[name].last_decisions
                decisions[name].append((int(patches[0].sum()), channels[0].numpy().copy()))
    dynexport.reset(model)
    return decisions, outputs


def _weighted_compute(decisions) -> np.ndarray:
    """Per channel: the number of (kept patch, computing channel) pairs over the clip."""
    total = np.zeros(len(decisions[0][1]), np.float64)
    for patches, channels in decisions:
        compute = channels == COMPUTE
        if compute.any():  # no computing channel: the plan runs nothing for this layer
            total += patches * compute
    return total


def _permutation_plan(model: nn.Module, example: torch.Tensor, orders: dict) -> list:
    """(module, "out" | "in", index) per coupled tensor side: new channel j of that side is old
    channel index[j]. Refuses (ChannelOrderError) what it cannot permute exactly."""
    import dynexport
    import torch_pruning as tp

    from dynexport.pruning.compaction import _output_layers
    from dynexport.pruning.gated_pruners import CUSTOMIZED_PRUNERS, depthwise_stand_ins, forget_traced_state

    dynexport.reset(model)
    with depthwise_stand_ins(model):
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                      customized_pruners=CUSTOMIZED_PRUNERS, verbose=False)
        forget_traced_state(model)
        names = {m: n for n, m in model.named_modules()}
        reaching_output = set(_output_layers(graph))
        plan, claimed = [], {}
        for root, order in orders.items():
            root_name = names[root]
            if root in reaching_output:
                raise ChannelOrderError(f"D-STEP layer {root_name!r}: its output channels reach the model output "
                                        "without a layer that mixes channels, so reordering them would permute "
                                        "the output")
            channels = root.conv.out_channels
            group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                            idxs=list(range(channels)))
            for item in group:
                module = item.dep.target.module
                if module not in names:
                    continue  # torch-pruning's own node for an elementwise op, concat, split, reshape: no tensors
                side = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
                label = names[module]
                if isinstance(module, DStepConv2d) and side == "out" and module is not root \
                        and module.channel_policy is not None:
                    raise ChannelOrderError(f"D-STEP layers {root_name!r} and {label!r} produce coupled channels "
                                            "(added or concatenated): ordering one would reorder the other")
                _check_permutable(module, label, side, root_name)
                index = _member_index(item, order, graph, module, side, label, root_name)
                key = (id(module), side if not _channels_tied(module) else "out")
                if key in claimed:
                    if not np.array_equal(claimed[key], index):
                        raise ChannelOrderError(f"module {label!r} is coupled to two reordered D-STEP layers with "
                                                "different orders")
                    continue
                claimed[key] = index
                plan.append((module, key[1], index))
    return plan


def _channels_tied(module: nn.Module) -> bool:
    """Input channel i is output channel i: depthwise convolutions, BatchNorm."""
    from dynexport.pruning.gated_pruners import is_depthwise

    conv = module.conv if isinstance(module, GatedLayer) else module
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or (isinstance(conv, nn.Conv2d) and is_depthwise(conv))


def _check_permutable(module: nn.Module, label: str, side: str, root: str) -> None:
    why = None
    if isinstance(module, DStepConv2d):
        if module.conv.groups != 1:
            why = f"a DStepConv2d with groups={module.conv.groups} (only groups=1 D-STEP layers are permuted)"
    elif isinstance(module, GatedLayer):
        why = f"a {type(module).__name__} (its gate state and thresholds are not permuted here)"
    elif isinstance(module, nn.Conv2d):
        if type(module) is not nn.Conv2d:
            why = f"a Conv2d subclass ({type(module).__name__})"
        elif module.groups != 1 and not _channels_tied(module):
            why = f"a grouped convolution (groups={module.groups}) whose channel slices a permutation would mix"
    elif isinstance(module, nn.modules.batchnorm._BatchNorm) or type(module) is nn.Linear:
        pass
    elif any(True for _ in module.parameters(recurse=False)) or any(
            b.numel() for b in module.buffers(recurse=False)):
        why = f"a {type(module).__name__} with per-channel tensors this rewrite does not know"
    if why is not None:
        raise ChannelOrderError(f"cannot reorder the output channels of D-STEP layer {root!r}: module {label!r} "
                                f"({side}put side) is {why}")


def _member_index(item, order, graph, module, side, label, root) -> np.ndarray:
    """The member's own permutation index from the root's order and torch-pruning's root ->
    member channel mapping (an offset for a concatenation, the identity otherwise)."""
    count = graph.get_out_channels(module) if side == "out" else graph.get_in_channels(module)
    if count is None:
        raise ChannelOrderError(f"cannot reorder the output channels of D-STEP layer {root!r}: torch-pruning "
                                f"knows no channel count for {label!r}")
    pairs = [(int(r), int(i)) for i, r in zip(item.idxs, item.root_idxs)]
    member = dict(pairs)
    if len(member) != len(pairs) or len(set(member.values())) != len(pairs) or len(member) != len(order):
        raise ChannelOrderError(f"cannot reorder the output channels of D-STEP layer {root!r}: module {label!r} "
                                "sees them as other than one channel each (e.g. a flatten of a spatial map)")
    index = np.arange(count)
    for k, old in enumerate(order):
        index[member[k]] = member[int(old)]
    return index


def _permute(module: nn.Module, side: str, index: torch.Tensor) -> None:
    """New channel j of ``module``'s ``side`` is old channel index[j] (the model is reset: no
    stream state to permute)."""
    def rows(tensor, dim=0):
        if tensor is not None:
            tensor.data = tensor.data.index_select(dim, index.to(tensor.device)).contiguous()

    if isinstance(module, DStepConv2d):
        if side == "out":
            rows(module.conv.weight)
            rows(module.conv.bias)
            fc2 = module.channel_policy.fc2 if module.channel_policy is not None else None
            if fc2 is not None:
                triples = (3 * index[:, None] + torch.arange(3)).flatten()
                fc2.weight.data = fc2.weight.data[triples].contiguous()
                fc2.bias.data = fc2.bias.data[triples].contiguous()
        else:
            rows(module.conv.weight, 1)
            if module.channel_policy is not None:
                fc1 = module.channel_policy.fc1
                both = torch.cat([index, index + module.conv.in_channels])  # current and previous pooled input
                fc1.weight.data = fc1.weight.data[:, both].contiguous()
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        for tensor in (module.weight, module.bias, module.running_mean, module.running_var):
            rows(tensor)
    elif isinstance(module, nn.Conv2d):
        if side == "out" or _channels_tied(module):
            rows(module.weight)
            rows(module.bias)
        else:
            rows(module.weight, 1)
    elif isinstance(module, nn.Linear):
        if side == "out":
            rows(module.weight)
            rows(module.bias)
        else:
            rows(module.weight, 1)


def _check_equivalent(reference, check, orders, original_outputs, outputs) -> float:
    for name, order in orders.items():
        for t, ((patches, before), (patches_after, after)) in enumerate(zip(reference[name], check[name])):
            if patches != patches_after or not np.array_equal(after, before[order]):
                raise ChannelOrderError(f"D-STEP layer {name!r}, frame {t}: the reordered model decides differently "
                                        "from the original (a coupling the dependency graph did not see?)")
    error = 0.0
    for t, (a, b) in enumerate(zip(original_outputs, outputs)):
        scale = max(float(a.abs().max()), 1e-12)
        frame_error = float((a - b).abs().max()) / scale
        error = max(error, frame_error)
        if frame_error > RELATIVE_TOLERANCE:
            raise ChannelOrderError(f"frame {t}: the reordered model's output differs from the original's by "
                                    f"{frame_error:.2e} of its range (more than {RELATIVE_TOLERANCE:g})")
    return error
