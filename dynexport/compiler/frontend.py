"""Front end: a user model (nn.Module or .pt2 ExportedProgram) at a named input shape becomes
a plain ``torch.fx.GraphModule`` of ATen ops (torch.export's IR, not decomposed further),
constants as get_attr, and each gate one custom-op node.

Invariant after ``export_graph``: the graph has one placeholder (the frame, NCHW float32,
batch 1), one output, no state mutation nodes (the frame program owns state), and every
gate node's state operands are get_attr nodes of the right shape for this resolution.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from dynexport.compiler.graph import GATE_TARGETS
from dynexport.errors import CompileError
from dynexport.exporting import export_program


def parse_input_shape(text: str) -> tuple[int, int, int, int]:
    """``1x3x128x128`` -> (1, 3, 128, 128)."""
    try:
        shape = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise CompileError(f"--input-shape: expected NxCxHxW such as 1x3x128x128, got {text!r}")
    if shape[0] != 1:
        raise CompileError(
            f"--input-shape {text}: batch {shape[0]} is not supported; a frame program runs one stream "
            "(batch 1). Run one session per stream instead"
        )
    return shape


def export_graph(model, input_shape: tuple[int, ...] | None) -> tuple[fx.GraphModule, tuple[int, ...]]:
    """Export ``model`` at ``input_shape`` and return (graph module, input shape)."""
    if isinstance(model, torch.export.ExportedProgram):
        program = model
        user_inputs = [s for s in program.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
        if len(user_inputs) != 1:
            raise CompileError(f"the .pt2 program takes {len(user_inputs)} inputs; dynexport compiles models of one frame input")
        recorded = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0].arg.name)
        recorded_shape = tuple(int(d) for d in recorded.meta["val"].shape)
        if input_shape is not None and tuple(input_shape) != recorded_shape:
            raise CompileError(
                f"the .pt2 program was exported at input shape {'x'.join(map(str, recorded_shape))}; "
                f"it cannot be built at {'x'.join(map(str, input_shape))}. Export it again at that shape, "
                "or pass the torch.save'd module instead"
            )
        input_shape = recorded_shape
    else:
        if not isinstance(model, nn.Module):
            raise CompileError(f"expected an nn.Module or a torch.export program, got {type(model).__name__}")
        if input_shape is None:
            raise CompileError("the model file records no input shape: pass --input-shape 1x3xHxW")
        if input_shape[0] != 1:
            raise CompileError(f"input batch {input_shape[0]}: a frame program runs one stream (batch 1)")
        # one frame at the shape first (gate state allocated), pruning's warning silenced
        program = export_program(model, input_shape)
    # No run_decompositions here: it costs seconds, and every segment is exported and
    # decomposed again by its backend anyway.
    graph_module = program.module()
    _strip_state_updates(graph_module)
    return graph_module, tuple(input_shape)


def _strip_state_updates(gm: fx.GraphModule) -> None:
    """Remove the buffer writes of gate state, export's guard call and its dtype assertions."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
            if hasattr(gm, "_guards_fn"):
                delattr(gm, "_guards_fn")
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten._assert_tensor_metadata.default:
            graph.erase_node(node)  # export's dtype assertions: the plan fixes dtypes itself
            continue
        if node.op == "call_function" and node.target in (torch.ops.aten.copy_.default, torch.ops.aten.copy_):
            destination = node.args[0]
            if destination.op == "get_attr" and any(user.target in GATE_TARGETS for user in destination.users):
                node.replace_all_uses_with(node.args[1])  # copy_ returns the buffer, now equal to the value
                graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
