import torch
import torch.nn.functional as F
from torch import nn

from dynexport.compiler.pipeline import compile_model
from dynexport.nn import SkipConv2d
from dynexport.plan.frame_program import NO_LAYER, GateKind, LayerKind, Op, Role

EXPECTED = [
    (Op.SKIP_GATE, 0, 0),
    (Op.BRANCH_IF_NONE, 0, 11),
    (Op.BRANCH_IF_DENSE, 0, 8),
    (Op.GATHER_TILES, 0, 0),
    (Op.RUN_SEGMENT, 0, 0),  # tile segment, batch = layer 0's active count
    (Op.SCATTER_TILES, 0, 0),
    (Op.STORE_REFERENCE, 0, 0),
    (Op.JUMP, 11, 0),
    (Op.RUN_SEGMENT, 1, NO_LAYER),  # dense segment
    (Op.COPY_BLOCKS, 0, 0),
    (Op.STORE_REFERENCE, 0, 0),
]


def test_one_gated_layer_lowers_to_the_documented_program():
    model = nn.Sequential(SkipConv2d(3, 8, 3, stride=2, padding=1, gate="gumbel", block=4)).eval()
    compiled = compile_model(model, (1, 3, 21, 19), dense_cutoff=0.5)
    program = compiled.program
    assert [(Op(i.op), i.a, i.b) for i in program.instructions] == EXPECTED
    [layer] = program.layers
    assert (layer.kind, layer.gate) == (LayerKind.SKIP_CONV, GateKind.GUMBEL)
    assert layer.grid.output_size == (11, 10) and layer.grid.blocks == (3, 3)
    assert layer.dense_cutoff == 4  # floor(0.5 * 9)
    assert layer.gate_bias < 0 and layer.gate_weight_count == 3 * 3 * 3
    shape = lambda t: program.tensors[t].shape
    assert shape(layer.reference) == (9, 9, 9, 3)  # blocks x tile (b-1)*s + k = 9 x C, NHWC
    # the tile segment takes up to 8 = blocks - 1 tiles, above the cut-off: tuning may raise it
    assert shape(layer.tiles) == (8, 9, 9, 3) and shape(layer.tile_output) == (8, 4, 4, 8)
    assert program.tensors[layer.output].role == Role.STATE and program.outputs == [layer.output]
    tiles = program.segments[0]
    assert tiles.max_batch == 8 and program.segments[1].max_batch == 0
    # the tile segment is the layer's convolution without padding, on tiles
    module = compiled.segments[tiles.name].module
    x = torch.randn(4, 3, 9, 9)
    torch.testing.assert_close(module(x)[0], F.conv2d(x, model[0].conv.weight, model[0].conv.bias, 2))


def test_several_gated_layers_each_get_their_own_block_machinery():
    model = nn.Sequential(SkipConv2d(3, 4, 3, padding=1), nn.ReLU(), SkipConv2d(4, 4, 3, padding=1, groups=4)).eval()
    program = compile_model(model, (1, 3, 32, 32)).program
    assert len(program.layers) == 2
    assert [Op(i.op) for i in program.instructions].count(Op.SKIP_GATE) == 2
    assert len(program.segments) == 4  # tiles, dense (the ReLU fused into both), tiles, dense
    assert program.state_bytes() == 4 * (2 * 32 * 32 * 4 + 16 * 10 * 10 * 3 + 16 * 10 * 10 * 4 + 2)


def test_small_grid_uses_the_tile_path_for_every_count_and_one_block_only_the_dense_path():
    small = compile_model(nn.Sequential(SkipConv2d(3, 4, 3, padding=1)).eval(), (1, 3, 16, 16)).program
    assert [s.name for s in small.segments] == ["layer_0_tiles"]
    assert small.segments[0].max_batch == 4 and small.layers[0].dense_cutoff == 4
    assert Op.BRANCH_IF_DENSE not in [Op(i.op) for i in small.instructions]
    single = compile_model(nn.Sequential(SkipConv2d(3, 4, 3, padding=1)).eval(), (1, 3, 8, 8)).program
    assert [s.name for s in single.segments] == ["layer_0_dense"]
    assert [Op(i.op) for i in single.instructions] == [
        Op.SKIP_GATE, Op.BRANCH_IF_NONE, Op.RUN_SEGMENT, Op.COPY_BLOCKS, Op.STORE_REFERENCE]


def test_a_small_grid_whose_blocks_stick_out_of_the_map_keeps_its_dense_segment():
    # 2 x 2 blocks of 8 over a 10x13 output: tiles of all four compute 256 positions for 130
    program = compile_model(nn.Sequential(SkipConv2d(3, 4, 3, padding=1)).eval(), (1, 3, 10, 13)).program
    assert [s.name for s in program.segments] == ["layer_0_tiles", "layer_0_dense"]
    [layer] = program.layers
    assert layer.grid.num_blocks == 4 and layer.dense_cutoff == 2 and program.segments[0].max_batch == 3
    assert Op.BRANCH_IF_DENSE in [Op(i.op) for i in program.instructions]
