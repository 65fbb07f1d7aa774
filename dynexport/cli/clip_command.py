"""``dynexport clip``: write a procedural test clip to a .npy file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dynexport.errors import DynexportError


def clip(
    name: str = typer.Argument("static_camera", help="Preset: static_camera, handheld, scene_cut, drift, still, mixed."),
    output: Path = typer.Option(Path("clip.npy"), "-o", "--output", help="Where to write the clip (uint8 [T,3,H,W])."),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help="Number of frames [default: the preset's]."),
    size: Optional[str] = typer.Option(None, "--size", help="HEIGHTxWIDTH in pixels [default: the preset's, 64x64]."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same clip."),
) -> None:
    """Write a procedural clip (no downloads) for verify and bench.

    Example: dynexport clip handheld --frames 64 --size 128x128 -o handheld.npy
    """
    import numpy as np

    from dynexport import video

    if name not in video.PRESETS:
        raise DynexportError(f"unknown clip {name!r}; expected one of {', '.join(video.PRESETS)}")
    overrides = {}
    if frames is not None:
        overrides["frames"] = frames
    if size is not None:
        try:
            overrides["height"], overrides["width"] = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise DynexportError(f"--size: expected HEIGHTxWIDTH such as 64x64, got {size!r}") from None
        if min(overrides["height"], overrides["width"]) < 8:
            raise DynexportError(f"--size: each side must be at least 8 pixels, got {size!r}")
    result = video.generate(name, seed=seed, **overrides)
    np.save(output, result.frames)
    t, _, height, width = result.frames.shape
    typer.echo(f"wrote {output}: {t} frames of 3x{height}x{width} uint8")
