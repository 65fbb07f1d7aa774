"""sparsity_report: zeros / weights per layer, and a 'not realized' verdict with its reason
for every layer that has zeros."""

import torch
from torch import nn

from dynexport.pruning.sparsity import NOT_ENABLED, sparsity_report


def test_every_layer_with_zeros_says_why_it_is_not_realized():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        model[0].weight.view(-1)[:10] = 0
        model[1].weight.view(-1)[:48] = 0  # 48/64 = 75 %: XNNPACK's sparse path would take it
        model[2].weight.view(-1)[:8] = 0  # 12.5 %
    rows = {row["name"]: row for row in sparsity_report(model)}
    assert rows["0"]["zeros"] == 10 and rows["0"]["weights"] == 216
    assert "1x1" in rows["0"]["realized"] and "3x3" in rows["0"]["realized"]
    assert rows["1"]["realized"] == NOT_ENABLED and rows["1"]["fraction"] == 0.75
    assert "2/3" in rows["2"]["realized"]
    assert "realized" not in rows["3"]
