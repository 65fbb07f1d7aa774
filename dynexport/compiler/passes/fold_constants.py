"""fold_constants: evaluate nodes whose inputs are all constants, once, at build time.

This is what turns ``torch.nn.utils.prune``'s reparametrization (``weight = weight_orig *
weight_mask``, recomputed by a forward pre-hook at every call) into a plain pruned weight,
and it removes any other constant arithmetic a model computes per frame.

Leaves alone: gate nodes and their state, anything reading the frame input.
Before: the front end's graph. After: no call_function node has only constant inputs.
"""

from __future__ import annotations

import torch
from torch import fx

from dynexport.compiler.graph import finish_rewrite, add_constant, constant, is_gate


def fold_constants(gm: fx.GraphModule) -> bool:
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or is_gate(node):
            continue
        inputs = node.all_input_nodes
        if not inputs or not all(n.op == "get_attr" for n in inputs):
            continue
        values = {n: constant(gm, n) for n in inputs}
        args = fx.node.map_arg(node.args, lambda n: values[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
        result = node.target(*args, **kwargs)
        if not isinstance(result, torch.Tensor):
            continue
        node.replace_all_uses_with(add_constant(gm, node, f"{node.name}_folded", result))
        gm.graph.erase_node(node)
        changed = True
    if changed:
        finish_rewrite(gm)
    return changed
