"""The ExecuTorch emitter: one method per segment, dynamic tile batch, the merge of programs
lowered in parallel, and its prepare hook (workers only for models worth lowering in parallel)."""

import pytest
import torch

from dynexport.compiler.plan_builder import SegmentArtifact, example_tensor
from dynexport.compiler.segment_modules import ConvSegment
from targets.executorch import ExecuTorchSegments
from targets.executorch.emitter import lower_segments
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
