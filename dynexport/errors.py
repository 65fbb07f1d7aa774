"""Errors a user can cause. Each message names the thing, what was expected and, where there
is one, the fix; the CLI prints them without a traceback."""


class DynexportError(Exception):
    """Base of every error dynexport raises on purpose."""


class FrameError(DynexportError, ValueError):
    """A frame was rejected (shape, dtype, NaN/Inf); no state was changed."""


class ModelLoadError(DynexportError):
    """A model file could not be loaded, or loading it would run untrusted code."""


class CompileError(DynexportError):
    """The model cannot be compiled as given (unsupported op, dynamic construct, bad shape)."""


class PlanError(DynexportError):
    """A built output folder or plan file is missing, damaged or inconsistent."""


class ExportError(DynexportError):
    """A model cannot be exported to, or streamed as, a torch.export program as given."""


class ConversionError(DynexportError, ValueError):
    """A model cannot be gated as asked: no convolution to convert, or a layer named by
    ``include`` that the gated layer cannot represent."""


class CalibrationError(DynexportError, ValueError):
    """Gate thresholds cannot be calibrated as asked (budget, clip or model unfit)."""
