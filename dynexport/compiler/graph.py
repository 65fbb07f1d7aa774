"""Helpers over torch.fx graphs shared by the passes: finding gate nodes, reading and
replacing constants, naming where a node came from in the user's model."""

from __future__ import annotations

import operator

import torch
from torch import fx

import dynexport.nn  # noqa: F401  (registers torch.ops.dynexport.*)

SKIP_CONV = torch.ops.dynexport.skip_conv2d.default
DSTEP = torch.ops.dynexport.dstep_conv2d.default
GATE_TARGETS = (SKIP_CONV, DSTEP)


def is_gate(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in GATE_TARGETS


def is_gate_output(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is operator.getitem and is_gate(node.args[0])


def constant(gm: fx.GraphModule, node) -> torch.Tensor | None:
    """The tensor behind a get_attr node (None for None)."""
    if node is None:
        return None
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        raise TypeError(f"expected a constant (get_attr) node, got {node}")
    value = gm
    for part in node.target.split("."):
        value = getattr(value, part)
    return value.detach()


def add_constant(gm: fx.GraphModule, before: fx.Node, name: str, value: torch.Tensor) -> fx.Node:
    """Register ``value`` as a new buffer of ``gm`` and return a get_attr node for it."""
    base = "_dynexport_" + name.replace(".", "_")
    attr, i = base, 0
    while hasattr(gm, attr):
        i += 1
        attr = f"{base}_{i}"
    gm.register_buffer(attr, value.detach().clone())
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(attr)


def module_path(node: fx.Node) -> str:
    """Where the node came from in the user's model, e.g. ``layer1.0.conv (Conv2d)``."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return "<model>"
    path, kind = list(stack.values())[-1]
    kind_name = kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1]
    return f"{path or '<model>'} ({kind_name})"


def value_shape(node: fx.Node) -> tuple[int, ...]:
    val = node.meta.get("val")
    if val is None or not hasattr(val, "shape"):
        raise ValueError(f"node {node.name} has no tensor shape")
    return tuple(int(d) for d in val.shape)


def finish_rewrite(gm: fx.GraphModule) -> None:
    """After a pass changed the graph: drop dead nodes, check it, regenerate its code."""
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
