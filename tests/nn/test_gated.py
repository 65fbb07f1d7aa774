"""What every gated layer shares (``dynexport/nn/gated.py``): here, weights reparametrized by
``torch.nn.utils.prune``, which a gated layer must recompute itself because it hands its
convolution's weight to its step function without calling the convolution."""

import pytest
import torch
from torch.nn.utils import prune

import dynexport
from dynexport.nn import DStepConv2d, SkipConv2d


@pytest.mark.parametrize("make", [lambda: SkipConv2d(3, 4, 3, padding=1, gate="gumbel"),
                                  lambda: DStepConv2d(3, 4, 3, padding=1, patch=4)], ids=["skip", "dstep"])
def test_a_pruned_gated_layer_trains_and_runs_with_its_current_mask(make):
    layer = make()
    prune.l1_unstructured(layer.conv, "weight", 0.5)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.conv.weight_orig.detach().clone()
    layer.train()
    for _ in range(2):  # a stale weight tensor fails on the second backward
        dynexport.reset(layer)
        layer(torch.rand(1, 3, 16, 16)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(layer.conv.weight_orig, before)
    clip = torch.rand(3, 3, 16, 16)
    pruned = list(dynexport.stream(layer, clip))
    prune.remove(layer.conv, "weight")  # now a plain weight, weight_orig * weight_mask
    assert float((layer.conv.weight == 0).float().mean()) == 0.5
    for t, (got, want) in enumerate(zip(pruned, dynexport.stream(layer, clip))):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=f"frame {t}")
