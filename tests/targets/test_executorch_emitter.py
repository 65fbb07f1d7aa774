"""The ExecuTorch emitter: one method per segment, dynamic tile batch, the merge of programs
lowered in parallel, and its prepare hook (workers only for models worth lowering in parallel)."""

import pytest
import torch

from dynexport.compiler.plan_builder import SegmentArtifact, example_tensor
from dynexport.compiler.segment_modules import ConvSegment
from targets.executorch import ExecuTorchSegments
from targets.executorch.emitter import STEPS_PER_SEGMENT, lower_segments
from targets.executorch.merge_programs import merge_programs


def conv_artifact(name, max_batch=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    module = ConvSegment(torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, generator=g), (1, 1), (0, 0), (1, 1), 1)
    shape = (max_batch or 1, 4, 10, 10)
    return SegmentArtifact(name, module, (example_tensor(shape),), max_batch=max_batch, kind="tiles" if max_batch else "dense")


@pytest.mark.slow
def test_merged_programs_keep_every_method_and_its_weights():
    first = {"a_tiles": conv_artifact("a_tiles", max_batch=5, seed=1), "a_dense": conv_artifact("a_dense", seed=2)}
    second = {"b_tiles": conv_artifact("b_tiles", max_batch=3, seed=3)}
    merged = ExecuTorchSegments(merge_programs([lower_segments(first), lower_segments(second)]))
    assert merged.method_names == {"a_tiles", "a_dense", "b_tiles"}
    for name, artifact in {**first, **second}.items():
        for batch in sorted({1, artifact.max_batch or 1}):
            x = example_tensor((batch, 4, 10, 10))
            got = merged.run(name, [x])[0]
            torch.testing.assert_close(got, artifact.module(x)[0], atol=1e-4, rtol=1e-4, msg=f"{name} batch {batch}")


def test_merging_the_same_method_twice_is_refused():
    part = lower_segments({"only": conv_artifact("only")})
    with pytest.raises(ValueError, match="more than one part"):
        merge_programs([part, part])


def test_the_prepare_hook_starts_no_workers_for_a_small_model():
    from targets import backend
    from targets.executorch.emitter import PARALLEL_FROM, lowering_workers

    assert backend("executorch").load_prepare() is lowering_workers
    small = torch.nn.Sequential(*[torch.nn.Conv2d(4, 4, 3) for _ in range(PARALLEL_FROM // 2 - 1)])
    with lowering_workers(small) as extra:
        assert extra == {}
    with lowering_workers(object()) as extra:  # not an nn.Module (e.g. a loaded program): no estimate
        assert extra == {}


class PointwiseTail(torch.nn.Module):
    """A conv, then the pointwise ops a segment between gated layers has (hardtanh, add)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return (torch.nn.functional.hardtanh(self.conv(x), 0.0, 6.0) + x,)


@pytest.mark.slow
def test_the_lowering_shortcuts_change_no_byte():
    """segment_partitioner, the memoized CIA op set and the cached annotations make lowering
    ~2.4x faster; what they produce must be what ExecuTorch's own path does. The progress
    ticks come STEPS_PER_SEGMENT per segment."""
    torch.manual_seed(0)
    segments = {"tiles": conv_artifact("tiles", max_batch=4, seed=5),
                "tail": SegmentArtifact("tail", PointwiseTail().eval(), (example_tensor((1, 4, 8, 8)),), kind="dense")}
    ticks = []
    assert lower_segments(segments, tick=lambda: ticks.append(1)) == lower_segments(segments, shortcuts=False)
    assert len(ticks) == STEPS_PER_SEGMENT * len(segments)  # the build's progress bar ends full


def test_the_segment_partitioner_keeps_the_per_node_check_for_ops_xnnpack_keeps_whole():
    from targets.executorch.emitter import segment_partitioner

    conv = torch.export.export(PointwiseTail().eval(), (torch.zeros(1, 4, 8, 8),), strict=False)
    linear = torch.export.export(torch.nn.Linear(4, 3).eval(), (torch.zeros(2, 4),), strict=False)
    partitioner = segment_partitioner()
    kept, check = partitioner.ops_to_not_decompose(linear)
    assert torch.ops.aten.linear.default in kept and check is not None  # ExecuTorch's careful round
    kept_conv, check_conv = partitioner.ops_to_not_decompose(conv)
    assert kept_conv == kept and check_conv is None  # nothing to preserve: the round is skipped


def test_the_memoized_cia_op_set_follows_new_registrations():
    import torch._export.utils as export_utils
    import torch.export.exported_program as exported_program

    from targets.executorch.emitter import _cia_ops_memoized

    fresh = export_utils._collect_all_valid_cia_ops()
    with _cia_ops_memoized():
        first = exported_program._collect_all_valid_cia_ops()
        assert first == fresh and exported_program._collect_all_valid_cia_ops() is not first  # a copy each time
        library = torch.library.Library("dynexport_cia_test", "DEF")
        library.define("scaled(Tensor x) -> Tensor")
        library.impl("scaled", lambda x: x * 2.0, "CompositeImplicitAutograd")
        after = exported_program._collect_all_valid_cia_ops()
        assert torch.ops.dynexport_cia_test.scaled.default in after and after - first == {
            torch.ops.dynexport_cia_test.scaled.default}
    assert exported_program._collect_all_valid_cia_ops is export_utils._collect_all_valid_cia_ops  # restored
