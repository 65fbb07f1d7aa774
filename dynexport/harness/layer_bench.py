"""The micro benchmark: one gated 3x3 convolution (64 -> 64 channels, 56x56, 8x8 blocks,
stride 1, padding 1) at chosen fractions of active blocks, in ``bench``'s report format.

The clip makes the fraction exact: every frame changes the *interior* of K randomly chosen
blocks (rows and columns 1..b-2 of the block's own input window), which no neighbouring
block's halo reads, so exactly those K blocks fire and all others reuse.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dynexport.harness.bench import BenchReport, bench_clip
from dynexport.harness.clips import VerifyClip

CHANNELS, SIZE, BLOCK = 64, 56, 8
DEFAULT_FRACTIONS = (0.06, 0.12, 0.25, 0.5)


def gated_layer_model() -> torch.nn.Module:
    from dynexport.nn import SkipConv2d

    torch.manual_seed(0)
    return SkipConv2d(CHANNELS, CHANNELS, 3, padding=1, block=BLOCK, gate="input_norm", threshold=0.5).eval()


def block_interior_clip(active_blocks: int, frames: int, seed: int = 0) -> VerifyClip:
    """Frames [T, 64, 56, 56] where, after the first, exactly ``active_blocks`` blocks change."""
    rng = np.random.default_rng(seed)
    blocks_per_side = SIZE // BLOCK
    clip = np.empty((frames, CHANNELS, SIZE, SIZE), np.float32)
    clip[0] = rng.standard_normal((CHANNELS, SIZE, SIZE), dtype=np.float32)
    for t in range(1, frames):
        clip[t] = clip[t - 1]
        for block in rng.choice(blocks_per_side ** 2, size=active_blocks, replace=False):
            row, col = divmod(int(block), blocks_per_side)
            rows = slice(row * BLOCK + 1, row * BLOCK + BLOCK - 1)
            cols = slice(col * BLOCK + 1, col * BLOCK + BLOCK - 1)
            clip[t, :, rows, cols] = rng.standard_normal((CHANNELS, BLOCK - 2, BLOCK - 2), dtype=np.float32)
    return VerifyClip(f"{active_blocks} of {blocks_per_side ** 2} blocks", clip)


@dataclasses.dataclass
class LayerBenchRow:
    fraction: float
    active_blocks: int
    reports: list[BenchReport]


def layer_bench(fractions=DEFAULT_FRACTIONS, frames: int = 24, threads: int = 1, passes: int = 5,
                backends: list[str] | None = None, progress: Callable[[str], None] | None = None) -> list[LayerBenchRow]:
    from dynexport.build import build
    from dynexport.harness.dense import build_dense
    from dynexport.harness.verify import open_build

    say = progress or (lambda message: None)
    model = gated_layer_model()
    blocks = (SIZE // BLOCK) ** 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="dynexport-layer-bench-") as tmp:
        path = Path(tmp) / "layer.pt"
        torch.save(model, path)
        shape = (1, CHANNELS, SIZE, SIZE)
        # host's default backends in one build, or each backend asked for in its own (a build
        # takes one --backend), with its own dense export
        groups = [None] if not backends else list(dict.fromkeys(backends))
        builds = []
        for name in groups:
            where = Path(tmp) / (name or "default")
            say(f"build the gated layer{f' for {name}' if name else ''}")
            gated = open_build(build(path, where / "out", target="host", backend=name, input_shape=shape).out)
            say(f"build the dense export{f' for {name}' if name else ''}")
            builds.append((gated, build_dense(model, shape, where, backend=name).out, [name] if name else None))
        for fraction in fractions:
            active = max(1, round(fraction * blocks))
            say(f"{100 * fraction:.0f}% active ({active} of {blocks} blocks)")
            clip = block_interior_clip(active, frames)
            reports = []
            for gated, dense, names in builds:
                reports += bench_clip(gated, clip, model, names, "host", threads, passes,
                                      progress=lambda m, f=fraction: say(f"{100 * f:.0f}%: {m}"), dense_folder=dense)
            rows.append(LayerBenchRow(fraction, active, reports))
    return rows
