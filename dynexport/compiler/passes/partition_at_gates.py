"""partition_at_gates: cut the graph at gate nodes into an ordered list of steps.

A step is either a ``DenseStep`` -- a maximal run of non-gate nodes in graph order, made into
a standalone ``GraphModule`` whose placeholders are the values it reads from earlier steps
and whose outputs are the values later steps (or the model output) read -- or a
``GateStep`` holding one gate node.

Invariant after: running the steps in order, each dense step on its inputs, reproduces the
graph; every value that crosses a step boundary has a name and a static shape; constants
(get_attr) are copied into the dense steps that use them. A graph without gates becomes one
dense step. Run after the folding passes.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import fx

from dynexport.compiler.graph import is_gate, is_gate_output, value_shape


@dataclasses.dataclass
class DenseStep:
    name: str
    module: fx.GraphModule
    inputs: list[str]  # value names, in placeholder order
    outputs: list[str]  # value names, in output order


@dataclasses.dataclass
class GateStep:
    node: fx.Node
    input: str  # value name of the gate's input frame/feature map
    output: str  # value name of the gate's main output (its epilogue's, once one is fused)
    epilogue: fx.GraphModule | None = None  # a pointwise step fused after it (fuse_pointwise_epilogue)


@dataclasses.dataclass
class PartitionedGraph:
    graph_module: fx.GraphModule
    steps: list
    input: str
    output: str
    shapes: dict[str, tuple[int, ...]]


def value_name(node: fx.Node) -> str:
    return node.name


def partition_at_gates(gm: fx.GraphModule) -> PartitionedGraph:
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    output_node = next(n for n in nodes if n.op == "output")
    results = output_node.args[0]
    results = results if isinstance(results, (tuple, list)) else (results,)
    if len(placeholders) != 1 or len(results) != 1 or not isinstance(results[0], fx.Node):
        raise ValueError("partition_at_gates expects a graph of one input and one tensor output")

    runs: list[list[fx.Node] | fx.Node] = []
    current: list[fx.Node] = []
    for node in nodes:
        if node.op in ("placeholder", "output", "get_attr") or is_gate_output(node):
            continue
        if is_gate(node):
            if current:
                runs.append(current)
                current = []
            runs.append(node)
        else:
            current.append(node)
    if current:
        runs.append(current)

    shapes: dict[str, tuple[int, ...]] = {value_name(placeholders[0]): value_shape(placeholders[0])}
    steps = []
    dense_index = 0
    for position, run in enumerate(runs):
        if isinstance(run, fx.Node):
            out = next(u for u in run.users if u.args[1] == 0)
            shapes[value_name(out)] = value_shape(out)
            steps.append(GateStep(node=run, input=value_name(run.args[0]), output=value_name(out)))
            continue
        members = set(run)
        inputs: list[fx.Node] = []
        for node in run:
            for source in node.all_input_nodes:
                if source not in members and source.op != "get_attr" and source not in inputs:
                    inputs.append(source)
        later = set(_nodes_after(runs, position)) | {output_node}
        outputs = [n for n in run if any(u in later for u in n.users)]
        module = _extract(gm, run, inputs, outputs)
        for n in outputs:
            shapes[value_name(n)] = value_shape(n)
        steps.append(DenseStep(name=f"segment_{dense_index}", module=module,
                               inputs=[value_name(n) for n in inputs], outputs=[value_name(n) for n in outputs]))
        dense_index += 1
    return PartitionedGraph(gm, steps, value_name(placeholders[0]), value_name(results[0]), shapes)


def _nodes_after(runs, position):
    for run in runs[position + 1:]:
        if isinstance(run, fx.Node):
            yield run
        else:
            yield from run


def _extract(gm: fx.GraphModule, run: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node]) -> fx.GraphModule:
    """A standalone GraphModule computing ``outputs`` from ``inputs`` with ``run``'s nodes."""
    root = torch.nn.Module()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in inputs:
        env[node] = graph.placeholder(value_name(node))
        env[node].meta = dict(node.meta)

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env and node.op == "get_attr":
            attr = node.target.replace(".", "_")
            value = gm
            for part in node.target.split("."):
                value = getattr(value, part)
            root.register_buffer(attr, value.detach().clone())
            env[node] = graph.get_attr(attr)
        return env[node]

    for node in run:
        env[node] = graph.node_copy(node, lookup)
    graph.output(tuple(env[n] for n in outputs))
    module = fx.GraphModule(root, graph)
    module.graph.lint()
    return module
