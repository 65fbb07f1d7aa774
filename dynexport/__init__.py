"""dynexport: a deployment compiler for dynamic video networks on phones.

Importing ``dynexport`` stays light (no torch) so that the CLI answers ``--help`` at once;
the streaming API is loaded on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "reset": "dynexport.streaming",
    "step": "dynexport.streaming",
    "stream": "dynexport.streaming",
    "frame_stats": "dynexport.streaming",
    "FrameStats": "dynexport.streaming",
    "load_model": "dynexport.loading",
    "save_model": "dynexport.loading",
    "export": "dynexport.exporting",
    **{name: "dynexport.gating" for name in ("convert", "calibrate", "Conversion", "CalibrationReport",
                                                   "order_dstep_channels")},
    "prune": "dynexport.pruning",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dynexport' has no attribute {name!r}")
