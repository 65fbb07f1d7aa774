from torch import nn

from dynexport.compiler.pipeline import compile_model
from dynexport.nn import DStepConv2d
from dynexport.plan.frame_program import DSTEP_SOURCE_DENSE, DSTEP_SOURCE_NONE, DSTEP_SOURCE_TILES, NO_LAYER, LayerKind, Op


def test_dstep_layer_lowers_to_policy_decide_and_three_apply_paths():
    model = nn.Sequential(DStepConv2d(3, 6, 3, padding=1, patch=4)).eval()
    compiled = compile_model(model, (1, 3, 16, 16))
    program = compiled.program
    [layer] = program.layers
    assert layer.kind == LayerKind.DSTEP
    ops = [(Op(i.op), i.a, i.b) for i in program.instructions]
    pooled, previous_pooled = program.instructions[0].b, program.instructions[0].c
    assert ops == [
        (Op.DSTEP_POLICY, 0, pooled),  # policies by the runtime: logits + pooled input
        (Op.DSTEP_DECIDE, 0, 0),
        (Op.COPY_TENSOR, pooled, previous_pooled),
        (Op.BRANCH_IF_NONE, 0, 12),
        (Op.BRANCH_IF_DENSE, 0, 9),
        (Op.GATHER_TILES, 0, 0),
        (Op.RUN_SEGMENT, 0, 0),  # tiles of active patches
        (Op.DSTEP_APPLY, 0, DSTEP_SOURCE_TILES),
        (Op.JUMP, 13, 0),
        (Op.RUN_SEGMENT, 1, NO_LAYER),  # dense
        (Op.DSTEP_APPLY, 0, DSTEP_SOURCE_DENSE),
        (Op.JUMP, 13, 0),
        (Op.DSTEP_APPLY, 0, DSTEP_SOURCE_NONE),
    ]
    names = [s.name for s in program.segments]
    assert names == ["layer_0_tiles", "layer_0_dense"]
    assert program.tensors[layer.spatial_logits].shape == (1, 4, 4, 2)
    assert program.tensors[layer.channel_logits].shape == (1, 6, 3)
    assert program.tensors[pooled].shape == program.tensors[previous_pooled].shape == (1, 3)


def test_the_policy_weights_are_in_the_plan_constants_in_their_layout():
    """spatial weight and bias, then w1, b1, w2, b2 (plan/dstep_policy.py), read back as the
    module's own; the plan refuses a count that fits no policy."""
    import copy

    import pytest
    import torch

    from dynexport.plan.dstep_policy import policy_hidden, unpack_policies
    from dynexport.plan.frame_program import PlanFormatError

    torch.manual_seed(0)
    conv = DStepConv2d(4, 6, 3, padding=1, patch=4)
    program = compile_model(nn.Sequential(conv).eval(), (1, 4, 16, 16)).program
    [layer] = program.layers
    hidden = conv.channel_policy.fc1.out_features
    assert policy_hidden(layer.gate_weight_count, True, True, 4, 6) == hidden
    spatial, channel = unpack_policies(program.constants, layer, True, True)
    assert torch.equal(spatial[0], conv.spatial_policy.conv.weight) and torch.equal(spatial[1], conv.spatial_policy.conv.bias)
    expected = (conv.channel_policy.fc1.weight, conv.channel_policy.fc1.bias, conv.channel_policy.fc2.weight,
                conv.channel_policy.fc2.bias)
    assert all(torch.equal(a, b) for a, b in zip(channel, expected))
    tampered = copy.deepcopy(program)
    tampered.layers[0].gate_weight_count -= 1
    with pytest.raises(PlanFormatError, match="DSTEP_POLICY"):
        tampered.validate()


def test_channel_policy_layer_is_split_into_output_channel_groups():
    """Above CHANNEL_GROUP_CHANNELS output channels, each group has its own tile and dense
    segment (the kernel's rows of its channels) behind BRANCH_IF_GROUP_IDLE, its output
    copied into its channels of the layer's tile / dense output; the policies' MACs per frame
    are in gate_macs_per_position."""
    import torch

    from dynexport.compiler.passes.lower_dstep import MIN_GROUP_DENSE_MACS, channel_groups

    assert channel_groups(8) == [(0, 8)]
    assert channel_groups(64) == [(0, 16), (16, 16), (32, 16), (48, 16)]
    assert channel_groups(40) == [(0, 14), (14, 14), (28, 12)]
    assert channel_groups(256) == [(0, 64), (64, 64), (128, 64), (192, 64)]  # at most MAX_CHANNEL_GROUPS
    # groups worth a call each: a layer of fewer dense MACs gets fewer groups, at least one
    assert channel_groups(64, dense_macs=2 * MIN_GROUP_DENSE_MACS) == [(0, 32), (32, 32)]
    assert channel_groups(64, dense_macs=MIN_GROUP_DENSE_MACS - 1) == [(0, 64)]
    torch.manual_seed(0)
    conv = DStepConv2d(3, 32, 3, padding=1, patch=4)
    compiled = compile_model(nn.Sequential(conv).eval(), (1, 3, 64, 64))  # 3.5 M MACs: 2 groups
    program = compiled.program
    [layer] = program.layers
    assert [s.name for s in program.segments] == [
        "layer_0_tiles_c0", "layer_0_dense_c0", "layer_0_tiles_c16", "layer_0_dense_c16"]
    groups = [(i.c, i.d) for i in program.instructions if i.op == Op.BRANCH_IF_GROUP_IDLE]
    assert groups == [(0, 16), (16, 16)] * 2  # tile path, dense path
    copies = [i for i in program.instructions if i.op == Op.COPY_CHANNELS]
    assert [(program.tensors[i.a].shape[-1], i.b, i.c, i.d) for i in copies] == [
        (16, layer.tile_output, 0, 0), (16, layer.tile_output, 16, 0),
        (16, layer.dense_output, 0, NO_LAYER), (16, layer.dense_output, 16, NO_LAYER)]
    second = compiled.segments["layer_0_dense_c16"].module
    assert torch.equal(second.weight, conv.conv.weight[16:]) and torch.equal(second.bias, conv.conv.bias[16:])
    assert layer.gate_macs_per_position == conv.policy_macs((1, 3, 64, 64))
