"""Data points (JSON) in, int256 predictions out."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ethml import safejson
from ethml.errors import InvalidInput


def parse_data_point(raw: bytes, feature_count: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    """A JSON array of numbers, or {"features": [...]}, with exactly `feature_count` finite values."""
    try:
        value = safejson.loads(raw)  # (json.loads: a deeply nested point would crash the node)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"not JSON ({exc})") from None
    if isinstance(value, dict):
        if "features" not in value:
            raise InvalidInput('a JSON object must have a "features" array')
        value = value["features"]
    if not isinstance(value, list):
        raise InvalidInput(f"expected a JSON array of numbers, got {type(value).__name__}")
    if len(value) != feature_count:
        raise InvalidInput(f"the model takes {feature_count} features, the data point has {len(value)}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise InvalidInput(f"feature {i} is {type(v).__name__}, not a number")
        if not math.isfinite(v):
            raise InvalidInput(f"feature {i} is not finite ({v})")
    return np.asarray(value, dtype=np.float64).reshape(1, -1)


#: The answers an int256 holds, less its lowest value: the contract's INVALID_INPUT sentinel (-2**255).
ANSWER_MIN, ANSWER_MAX = -(2**255) + 1, 2**255 - 1


def encode_prediction(value: Any, kind: str, decimals: int) -> int:
    """The int256 a miner submits: the class label, or round(value * 10**decimals) for regression. InvalidInput
    for a value that has none: a label that is not an integer, a non-finite value, or one outside int256 or equal
    to the INVALID_INPUT sentinel (a commitment cannot encode the first, and the second would read as invalid
    input). Every miner computes the same value, so every miner answers that point INVALID_INPUT alike."""
    if kind == "classification":
        label = value.item() if hasattr(value, "item") else value
        if isinstance(label, float) and not label.is_integer():
            raise InvalidInput(f"class label {label} is not an integer")
        answer = int(label)
    else:
        scaled: float = float(value) * 10.0**decimals
        if not math.isfinite(scaled):
            raise InvalidInput(f"the model produced a non-finite value ({value})")
        answer = round(scaled)
    if not ANSWER_MIN <= answer <= ANSWER_MAX:
        raise InvalidInput(f"the model's answer ({len(str(abs(answer)))} digits) is not an int256, or is the sentinel")
    return answer


def decode_prediction(value: int, kind: str, decimals: int) -> float | int:
    return value if kind == "classification" else value / 10**decimals
