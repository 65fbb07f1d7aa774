"""Gating a trained network without retraining: ``convert`` its convolutions into norm-gated
layers with the same weights, then ``calibrate`` their thresholds to a MAC budget on a clip;
``order_dstep_channels`` reorders a D-STEP model's output channels (an exact rewrite) so that
the plan's channel groups idle."""

from dynexport.gating.calibrate import CalibrationReport, ClipResult, LayerCalibration, calibrate
from dynexport.gating.convert import Conversion, ConvertedLayer, SkippedLayer, convert, unsupported_reason
from dynexport.gating.regroup_channels import ChannelOrderError, ChannelOrdering, LayerOrder, order_dstep_channels

__all__ = ["CalibrationReport", "ChannelOrderError", "ChannelOrdering", "ClipResult", "Conversion", "ConvertedLayer",
           "LayerCalibration", "LayerOrder", "SkippedLayer", "calibrate", "convert", "order_dstep_channels",
           "unsupported_reason"]
