"""Commands that are designed but not built yet. Each says so and exits with status 2, so a
script never mistakes a missing feature for success."""

from __future__ import annotations

from dynexport.errors import NotBuiltYetError

_PLANNED = {
    "bench": ("measure the realized speedup of the dynamic plan against the dense export",
              "the benchmark (issue: dynexport bench)"),
}


def _planned(name: str, summary: str, needs: str):
    def command() -> None:
        raise NotBuiltYetError(f"'{name}' is not built yet in this version; it needs {needs}.")

    command.__doc__ = f"{summary[0].upper()}{summary[1:]}. [not built yet: exits with status 2]"
    command.__name__ = name
    return command


COMMANDS = {name: _planned(name, summary, needs) for name, (summary, needs) in _PLANNED.items()}
