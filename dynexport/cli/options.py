"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

OutDir = Annotated[Path, typer.Argument(help="A folder written by 'dynexport build'.", show_default=False)]
AllowPickle = Annotated[bool, typer.Option(
    "--allow-pickle", help="Trust the model file: allow any pickled class (runs code from the file).")]
InputShape = Annotated[Optional[str], typer.Option(
    "--input-shape", help="Frame shape NxCxHxW, e.g. 1x3x128x128.", show_default="recorded in the model file")]
ClipFile = Annotated[Optional[Path], typer.Option(
    "--clip", help="Frames [T, C, H, W] as .npy: uint8 (normalized as the manifest says) or float32.")]
SYNTHETIC_PRESETS = "static_camera, handheld, scene_cut, drift, still, mixed, small_objects"
Backends = Annotated[Optional[list[str]], typer.Option(
    "--backend", help="Backend (repeatable).", show_default="every backend in the build")]
Device = Annotated[str, typer.Option(
    "--device", help="Where the native runtime runs: host, qemu-arm64 (ARM64 under emulation: use few, "
                     "small frames), adb (a connected Android device) or jvm (verify only: through the "
                     "Kotlin API and JNI on this machine's JVM).")]
