"""Residual: the one building block torch.nn lacks for ResNet-style models. It lives here so
that a model made only of torch.nn and dynexport.nn modules loads without unpickling any
class outside the allow-list (see dynexport.loading)."""

from __future__ import annotations

from torch import Tensor, nn


class Residual(nn.Module):
    """``activation(body(x) + shortcut(x))``; the shortcut is the identity when None."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None, activation: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.activation = activation if activation is not None else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.body(x) + self.shortcut(x))
