"""Models: the bundled manifest, safe loading, data points and prediction encoding."""

from ethml.ml.datapoint import decode_prediction, encode_prediction, parse_data_point
from ethml.ml.loader import TRUSTED_TYPES, LoadedModel, ModelStore, load_bundled, load_untrusted
from ethml.ml.manifest import DataPoint, Manifest, ModelEntry, default_models_dir

__all__ = [
    "TRUSTED_TYPES",
    "DataPoint",
    "LoadedModel",
    "Manifest",
    "ModelEntry",
    "ModelStore",
    "decode_prediction",
    "default_models_dir",
    "encode_prediction",
    "load_bundled",
    "load_untrusted",
    "parse_data_point",
]
