"""A ``torch.export`` program of a gated model (a ``.pt2``) run as the streaming reference.

An ``ExportedProgram`` has no modules, so the gated layers of the model it was exported from
are gone; what remains is one custom-op node per gate whose state operands are buffers that
``program.module()`` updates in place (``copy_``) on every call. ``ExportedModel`` runs that
module frame by frame and presents each gate node as an ``ExportedGate``: the same state
interface as ``GatedLayer`` (reset, snapshot, restore) and the same ``last_decisions``, read
from the gate op's outputs. So ``dynexport.reset`` / ``step`` / ``stream`` and the harness's
reference run treat a ``.pt2`` exactly as the ``nn.Module`` it came from.

Invariant: ``gates`` lists the gate nodes in graph (execution) order, each named by the
module path it was traced from, as the compiler names plan layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from dynexport.errors import ExportError
from dynexport.nn import ops as _ops  # noqa: F401  (registers torch.ops.dynexport.*)

SKIP_CONV = torch.ops.dynexport.skip_conv2d.default
DSTEP = torch.ops.dynexport.dstep_conv2d.default
# which outputs of each gate op are its hard decisions (see ops.py): the block mask; D-STEP's
# patch mask and channel decision
_DECISION_OUTPUTS = {SKIP_CONV: (2,), DSTEP: (2, 3)}


def is_gate_node(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _DECISION_OUTPUTS


def _gate_names(nodes: list[fx.Node]) -> list[str]:
    """The module path each gate node was traced from; a module called again gets ``path#2``,
    ``path#3``... (the plan's layer names)."""
    names: list[str] = []
    for node in nodes:
        stack = node.meta.get("nn_module_stack")
        path = (list(stack.values())[-1][0] if stack else "") or node.name
        name, i = path, 1
        while name in names:
            i += 1
            name = f"{path}#{i}"
        names.append(name)
    return names


class ExportedGate:
    """One gate node of an exported program, seen as a gated layer: its state is the buffers
    of the graph module that the node reads and the graph writes back."""

    def __init__(self, graph_module: fx.GraphModule, node: fx.Node, name: str) -> None:
        self.name = name
        self.stream_name = self.name
        self.node_name = node.name
        self.kind = "dstep_conv" if node.target == DSTEP else "skip_conv"
        self._decision_outputs = _DECISION_OUTPUTS[node.target]
        self._graph_module = graph_module
        operands = dict(zip((a.name for a in node.target._schema.arguments), node.args))
        written = {n.args[0].target for n in node.graph.nodes
                   if n.op == "call_function" and n.target == torch.ops.aten.copy_.default
                   and isinstance(n.args[0], fx.Node) and n.args[0].op == "get_attr"}
        self._primed = operands["primed"].target
        self._state = [value.target for value in operands.values()
                       if isinstance(value, fx.Node) and value.op == "get_attr" and value.target in written]
        for target in self._state:
            # program.module() shares the program's tensors: stream on copies, so the program
            # (built, saved or wrapped again) keeps the state it was exported with
            owner, _, attribute = target.rpartition(".")
            module = graph_module.get_submodule(owner) if owner else graph_module
            module.register_buffer(attribute, self._buffer(target).clone(), persistent=False)
        self.last_decisions = None
        self.last_stats = None  # MAC statistics need the module; an exported program has none

    def _buffer(self, target: str) -> Tensor:
        return self._graph_module.get_buffer(target)

    def reset_state(self) -> None:
        """Forget the past: the next frame is computed densely."""
        self._buffer(self._primed).fill_(False)
        self.last_decisions = None

    def state_snapshot(self) -> dict[str, Tensor]:
        # the graph writes state in place, so a snapshot must copy it
        return {target: self._buffer(target).clone() for target in self._state}

    def restore_state(self, snapshot: dict[str, Tensor]) -> None:
        for target, value in snapshot.items():
            self._buffer(target).copy_(value)

    def record(self, outputs) -> None:
        decisions = tuple(outputs[i].detach().clone() for i in self._decision_outputs)
        self.last_decisions = decisions if len(decisions) > 1 else decisions[0]


class _RecordingInterpreter(fx.Interpreter):
    """Runs the graph node by node and hands each gate node's outputs to its ExportedGate."""

    def __init__(self, graph_module: fx.GraphModule, gates: dict[str, ExportedGate]) -> None:
        super().__init__(graph_module)
        self._gates = gates

    def run_node(self, node: fx.Node):
        result = super().run_node(node)
        gate = self._gates.get(node.name)
        if gate is not None:
            gate.record(result)
        return result


class ExportedModel(nn.Module):
    """``ExportedModel(program)``: a ``torch.export.ExportedProgram`` of a gated model as a
    stateful module that ``dynexport.reset`` / ``step`` / ``stream`` accept. Gate decisions are
    reported per gate (``gates``); MAC statistics (``frame_stats``) are not, as they need the
    original modules."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.graph_module = program.module()
        nodes = [node for node in self.graph_module.graph.nodes if is_gate_node(node)]
        self.gates = [ExportedGate(self.graph_module, node, name) for node, name in zip(nodes, _gate_names(nodes))]
        self._interpreter = _RecordingInterpreter(self.graph_module, {g.node_name: g for g in self.gates})
        self.input_shape = _input_shape(program)
        self.training = False

    def train(self, mode: bool = True) -> "ExportedModel":
        # a program exported in eval mode has only eval semantics (and torch refuses
        # train()/eval() on it): eval() is a no-op, train() an error
        if mode:
            raise ExportError("an exported program (.pt2) runs in eval semantics only; train the nn.Module "
                              "it was exported from")
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self._interpreter.run(x)


def _input_shape(program: torch.export.ExportedProgram) -> tuple[int, ...] | None:
    user_inputs = [spec.arg.name for spec in program.graph_signature.input_specs
                   if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    for node in program.graph.nodes:
        if node.op == "placeholder" and user_inputs and node.name == user_inputs[0]:
            return tuple(int(d) for d in node.meta["val"].shape)
    return None


def ungated_program(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with every gate node replaced by its plain convolution (same weights, every
    block computed, no state): what the model computes without dynexport, exported again at
    the same input shape."""
    graph_module = program.module()
    graph = graph_module.graph
    for node in [n for n in graph.nodes if is_gate_node(n)]:
        operands = dict(zip((a.name for a in node.target._schema.arguments), node.args))
        with graph.inserting_before(node):
            conv = graph.call_function(torch.ops.aten.conv2d.default, tuple(
                operands[name] for name in ("x", "weight", "bias", "stride", "padding", "dilation", "groups")))
        buffers = {value for value in operands.values() if isinstance(value, fx.Node) and value.op == "get_attr"}
        for user in list(node.users):
            if user.args[1] == 0:  # getitem 0: the layer output; the others only feed state writes
                user.replace_all_uses_with(conv)
        for write in [n for n in graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.copy_.default
                      and n.args[0] in buffers]:
            graph.erase_node(write)
    graph.eliminate_dead_code()
    graph.lint()
    graph_module.recompile()
    example = torch.zeros(_input_shape(program))
    return torch.export.export(graph_module, (example,), strict=False)
