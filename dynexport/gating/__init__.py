"""Gating a trained network without retraining: ``convert`` its convolutions into norm-gated
layers with the same weights, then ``calibrate`` their thresholds to a MAC budget on a clip."""

from dynexport.gating.calibrate import CalibrationReport, ClipResult, LayerCalibration, calibrate
from dynexport.gating.convert import Conversion, ConvertedLayer, SkippedLayer, convert, unsupported_reason

__all__ = ["CalibrationReport", "ClipResult", "Conversion", "ConvertedLayer", "LayerCalibration", "SkippedLayer",
           "calibrate", "convert", "unsupported_reason"]
