"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

OutDir = Annotated[Path, typer.Argument(help="A folder written by 'dynexport build'.", show_default=False)]
AllowPickle = Annotated[bool, typer.Option(
    "--allow-pickle", help="Trust the model file: allow any pickled class (runs code from the file).")]
InputShape = Annotated[Optional[str], typer.Option(
    "--input-shape", help="Frame shape NxCxHxW, e.g. 1x3x128x128 [default: recorded in the model file].")]
