"""add_dense_fallback: where the busy branch and the fallback block go, what the fallback
segment computes (the model densely, from the first layer's output on), and the models it
refuses."""

import pytest
import torch
from torch import nn

from dynexport.compiler.passes.dense_fallback import SEGMENT_NAME
from dynexport.compiler.pipeline import compile_model
from dynexport.errors import CompileError
from dynexport.nn import DStepConv2d, Residual, SkipConv2d
from dynexport.plan.frame_program import NO_LAYER, Op

SHAPE = (1, 3, 32, 32)


def three_layers():
    torch.manual_seed(0)
    return nn.Sequential(SkipConv2d(3, 8, 3, padding=1), nn.ReLU(),
                         Residual(nn.Sequential(SkipConv2d(8, 8, 3, padding=1), nn.ReLU(), SkipConv2d(8, 8, 3, padding=1))),
                         nn.Conv2d(8, 2, 1)).eval()


def test_the_busy_branch_follows_the_first_layer_and_jumps_to_one_dense_segment():
    compiled = compile_model(three_layers(), SHAPE, dense_fallback=0.25, dense_fallback_hold=2)
    program = compiled.program
    ops = [Op(i.op) for i in program.instructions]
    busy = ops.index(Op.BRANCH_IF_BUSY)
    # a held frame skips the first gate: its branch comes first
    holding = program.instructions[0]
    assert ops[0] == Op.BRANCH_IF_HOLDING and holding.a == 0 and ops[1] == Op.SKIP_GATE
    # everything before it is the first layer's (its gate and block instructions)
    assert all(i.op in (Op.SKIP_GATE, Op.BRANCH_IF_HOLDING) or i.a == 0 or i.op in (Op.RUN_SEGMENT, Op.JUMP)
               for i in program.instructions[:busy])
    assert all(i.a != 1 or i.op in (Op.RUN_SEGMENT, Op.JUMP) for i in program.instructions[:busy])
    branch = program.instructions[busy]
    blocks = program.layers[0].grid.num_blocks
    assert (branch.a, branch.c, branch.d) == (0, int(0.25 * blocks), 2)
    # the held block and the fallback block close the plan: the normal path jumps over both;
    # the held block is the first layer's dense path (its last three instructions before the
    # busy branch) and runs into the fallback
    assert ops[-6:] == [Op.JUMP, Op.RUN_SEGMENT, Op.COPY_BLOCKS, Op.STORE_REFERENCE, Op.RUN_SEGMENT,
                        Op.FORGET_LAYERS]
    assert holding.b == len(ops) - 5 and branch.b == len(ops) - 2
    assert program.instructions[-6].a == len(ops)
    held = [(i.op, i.a, i.b) for i in program.instructions[-5:-2]]
    assert held == [(i.op, i.a, i.b) for i in program.instructions[busy - 3:busy]]
    assert program.segments[held[0][1]].name.endswith("_dense") and all(i[1] == 0 for i in held[1:])
    run, forget = program.instructions[-2:]
    assert program.segments[run.a].name == SEGMENT_NAME and run.b == NO_LAYER
    assert (forget.a, forget.b) == (1, len(program.layers) - 1)
    segment = program.segments[run.a]
    assert program.segment_outputs(segment) == program.outputs
    assert program.layers[0].output in program.segment_inputs(segment)


def test_without_a_hold_there_is_no_held_block():
    program = compile_model(three_layers(), SHAPE, dense_fallback=0.25).program
    ops = [Op(i.op) for i in program.instructions]
    assert Op.BRANCH_IF_HOLDING not in ops and ops[0] == Op.SKIP_GATE
    assert ops[-3:] == [Op.JUMP, Op.RUN_SEGMENT, Op.FORGET_LAYERS]


def test_the_fallback_segment_computes_the_dense_model_from_the_first_layers_output():
    import dynexport

    model = three_layers()
    compiled = compile_model(model, SHAPE, dense_fallback=0.25)
    artifact = compiled.segments[SEGMENT_NAME]
    assert len(artifact.example_inputs) == 1  # the first layer's output, after its fused ReLU
    frame = torch.rand(SHAPE)
    with torch.no_grad():
        got = artifact.module(torch.relu(model[0].conv(frame)))[0]
    dynexport.reset(model)
    dense = dynexport.step(model, frame)  # a first frame computes every block
    assert torch.allclose(got, dense, atol=1e-5)


def test_on_a_grid_without_a_dense_path_the_held_block_is_the_tile_path():
    torch.manual_seed(0)
    small = nn.Sequential(SkipConv2d(3, 8, 3, padding=1, block=8), nn.ReLU(), SkipConv2d(8, 8, 3, padding=1),
                          nn.Conv2d(8, 2, 1)).eval()
    program = compile_model(small, (1, 3, 16, 16), dense_fallback=0.5, dense_fallback_hold=1).program
    assert program.layers[0].grid.num_blocks <= 4
    ops = [Op(i.op) for i in program.instructions]
    holding = program.instructions[0]
    assert ops[holding.b:holding.b + 4] == [Op.GATHER_TILES, Op.RUN_SEGMENT, Op.SCATTER_TILES, Op.STORE_REFERENCE]
    assert program.instructions[holding.b + 1].b == 0  # its batch: layer 0's active count, all blocks


def test_models_the_fallback_cannot_cover_are_refused_with_a_reason():
    with pytest.raises(CompileError, match="two or more gated layers"):
        compile_model(nn.Sequential(SkipConv2d(3, 8, 3, padding=1)).eval(), SHAPE, dense_fallback=0.5)
    dstep = nn.Sequential(SkipConv2d(3, 8, 3, padding=1), DStepConv2d(8, 8, 3, padding=1, patch=4)).eval()
    with pytest.raises(CompileError, match="D-STEP"):
        compile_model(dstep, SHAPE, dense_fallback=0.5)
    with pytest.raises(CompileError, match="fraction"):
        compile_model(three_layers(), SHAPE, dense_fallback=1.5)
    with pytest.raises(CompileError, match="hold"):
        compile_model(three_layers(), SHAPE, dense_fallback=0.5, dense_fallback_hold=-1)


def test_auto_builds_the_fallback_where_the_model_allows_one_and_nothing_elsewhere():
    """AUTO (what ``dynexport build`` does unless told otherwise): AUTO_FRACTION of the first
    layer's blocks in a Skip-Conv model of two or more gated layers; no fallback, and no
    error, where a fraction would be refused."""
    from dynexport.compiler.passes.dense_fallback import AUTO, AUTO_FRACTION
    from dynexport.streaming import fallback_count

    program = compile_model(three_layers(), SHAPE, dense_fallback=AUTO).program
    blocks = program.layers[0].grid.num_blocks
    assert program.dense_fallback() == (0, fallback_count(AUTO_FRACTION, blocks), 0, False)
    single = nn.Sequential(SkipConv2d(3, 8, 3, padding=1)).eval()
    dstep = nn.Sequential(SkipConv2d(3, 8, 3, padding=1), DStepConv2d(8, 8, 3, padding=1, patch=4)).eval()
    for model in (single, dstep):
        assert compile_model(model, SHAPE, dense_fallback=AUTO).program.dense_fallback() is None
    with pytest.raises(CompileError, match="'auto' or None"):
        compile_model(three_layers(), SHAPE, dense_fallback="sometimes")
