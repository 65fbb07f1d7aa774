"""fold_batchnorm: merge an eval-mode BatchNorm into the convolution that feeds it.

Rewrites ``batch_norm(conv(x, W, B))`` -> ``conv(x, W', B')`` with
``W' = W * s``, ``B' = (B - mean) * s + beta``, ``s = gamma / sqrt(var + eps)`` per output
channel, where conv is ``aten.conv2d`` / ``aten.convolution`` or a gate op
(``dynexport.skip_conv2d``, ``dynexport.dstep_conv2d``) whose output feeds only the BatchNorm.

Gates stay exact: a skip conv's active blocks are ``conv(x)`` and its inactive blocks keep an
earlier ``conv(x)``, so the per-channel affine map commutes with the gate. The one gate that
reads the kernel, ``output_norm`` (score = ||r|| * max_o ||w_o||), has its threshold rescaled
by ``max||w'|| / max||w||`` so its decisions do not change. A D-STEP *reused* channel is an
earlier output of the same layer, so it commutes too; a *skipped* channel is 0 before the
BatchNorm and ``beta - mean * s`` after it, so D-STEP layers with a channel policy are left
alone (their BatchNorm runs in the next segment).

Leaves alone: BatchNorms whose input is anything else or has other users.
Before: the front end's graph. After: no foldable BatchNorm remains; numerics equal up to
float rounding. Run before partition_at_gates.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from dynexport.compiler.graph import finish_rewrite, DSTEP, SKIP_CONV, add_constant, constant, is_gate

# eval-mode batch norm as torch.export's training IR (one tensor) and as core ATen
# (a tuple whose item 0 is the output); eps is at a different position in each
BATCH_NORMS = {torch.ops.aten.batch_norm.default: 7, torch.ops.aten._native_batch_norm_legit_no_training.default: 6}
CONVS = (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)


def fold_batchnorm(gm: fx.GraphModule) -> bool:
    changed = False
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target not in BATCH_NORMS:
            continue
        source = bn.args[0]
        conv = _foldable_producer(source)
        if conv is None:
            continue
        gamma, beta, mean, var = (constant(gm, n) for n in bn.args[1:5])
        eps = bn.args[BATCH_NORMS[bn.target]]
        if bn.target == torch.ops.aten.batch_norm.default and bn.args[5]:
            continue  # training-mode statistics: nothing constant to fold
        scale = (gamma if gamma is not None else torch.ones_like(mean)) / torch.sqrt(var + eps)
        shift = beta if beta is not None else torch.zeros_like(mean)
        weight = constant(gm, conv.args[1])
        bias = constant(gm, conv.args[2]) if len(conv.args) > 2 else None
        new_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        new_bias = ((bias if bias is not None else torch.zeros_like(mean)) - mean) * scale + shift
        args = list(conv.args)
        args[1] = add_constant(gm, conv, f"{conv.name}_folded_weight", new_weight)
        if len(args) > 2:
            args[2] = add_constant(gm, conv, f"{conv.name}_folded_bias", new_bias)
        else:
            args.append(add_constant(gm, conv, f"{conv.name}_folded_bias", new_bias))
        if conv.target == SKIP_CONV and args[13] == "output_norm":
            args[14] = float(args[14]) * float(_kernel_norm(new_weight) / _kernel_norm(weight))
        conv.args = tuple(args)
        if bn.target == torch.ops.aten.batch_norm.default:
            bn.replace_all_uses_with(source)
        # the core ATen form returns (out, mean, rstd); only item 0 is used in inference graphs
        for user in list(bn.users):
            if user.target is operator.getitem and user.args[1] == 0:
                user.replace_all_uses_with(source)
        changed = True
    if changed:
        finish_rewrite(gm)
    return changed


def _kernel_norm(weight: torch.Tensor) -> torch.Tensor:
    return weight.flatten(1).norm(dim=1).max()


def _foldable_producer(source: fx.Node) -> fx.Node | None:
    """The conv or gate node whose output is ``source``, when folding into it is exact."""
    if len(source.users) != 1:
        return None
    if source.op == "call_function" and source.target in CONVS:
        conv = source
        if source.target == torch.ops.aten.convolution.default and source.args[6]:  # transposed
            return None
    elif source.op == "call_function" and source.target is operator.getitem and is_gate(source.args[0]) \
            and source.args[1] == 0:
        conv = source.args[0]
        if conv.target == DSTEP and conv.args[5] is not None:  # has a channel policy
            return None
    else:
        return None
    if not all(isinstance(a, fx.Node) and a.op == "get_attr" for a in conv.args[1:2]):
        return None
    if len(conv.args) > 2 and conv.args[2] is not None and not (isinstance(conv.args[2], fx.Node) and conv.args[2].op == "get_attr"):
        return None
    return conv
