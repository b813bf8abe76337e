"""The dataset reader: numpy's C parser gives exactly the floats Python's own parser gives (so an
artifact does not depend on which reads the CSV), every malformed row is named, and the deployment's
limits are enforced."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ethml.training import parse_spec
from ethml.training.jobs import TrainingError, fit_and_claim, read_csv
from ethml.training.spec import TrainingLimits
from tests.training.conftest import forest_spec, generated_csv

SPEC = parse_spec({"target": "y", "features": ["a", "b"], "estimator": {"name": "Ridge"}, "metric": "r2"})
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(finite, finite, finite), min_size=10, max_size=40), style=st.sampled_from(["repr", "e"]))
def test_numpy_reads_the_same_floats_as_python(rows: list[tuple[float, float, float]], style: str) -> None:
    fmt = repr if style == "repr" else (lambda v: f"{v:.17e}")
    text = "b,y,a\n" + "".join(f"{fmt(b)},{fmt(y)},{fmt(a)}\n" for a, b, y in rows)
    x, target = read_csv(text.encode(), SPEC)
    assert x.tobytes() == np.asarray([[float(fmt(a)), float(fmt(b))] for a, b, _y in rows]).tobytes()
    assert target.tobytes() == np.asarray([float(fmt(y)) for _a, _b, y in rows]).tobytes()
    assert x.flags.c_contiguous and x.dtype == np.float64


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "not a CSV with a header"),
        (b"a,y\n" + b"1,2\n" * 20, "no column 'b'"),
        (b"a,b,y\n1,2,3\n1,x,3\n" + b"1,2,3\n" * 20, "row 3 is not numeric"),
        (b"a,b,y\n1,2,3\n1,2\n" + b"1,2,3\n" * 20, "row 3 is not numeric"),
        (b"a,b,y\n" + b"1,2,3\n" * 5, "5 rows are too few"),
        (b"a,b,y\n" + b"1,nan,3\n" * 20, "NaN or infinite"),
        (b"a,b,y\n\xff\xfe,1,2\n" + b"1,2,3\n" * 20, "not"),
    ],
)
def test_malformed_data_is_named(raw: bytes, says: str) -> None:
    with pytest.raises(TrainingError, match=says):
        read_csv(raw, SPEC)


def test_quoted_fields_and_blank_lines_are_read() -> None:
    x, y = read_csv(b'a,b,y\n"1.5",2,3\n\n' + b"1,2,3\n" * 20, SPEC)
    assert x[0].tolist() == [1.5, 2.0] and len(x) == 21 and y[0] == 3.0


def test_the_deployment_limits_refuse_what_they_do_not_allow() -> None:
    spec, data = forest_spec(trees=5), generated_csv(2_000)
    with pytest.raises(TrainingError, match="more than 1,000 rows, this deployment's limit"):
        fit_and_claim(spec, data, 1, TrainingLimits(max_rows=1_000))
    with pytest.raises(TrainingError, match="over this deployment's 2,048 limit"):
        fit_and_claim(spec, data, 1, TrainingLimits(max_dataset_bytes=2048))
    slow = parse_spec({**spec.model_dump(), "max_train_seconds": 3600})
    with pytest.raises(Exception, match="asks for up to 3600 s per job; this deployment allows 600 s"):
        fit_and_claim(slow, data, 1)
    assert fit_and_claim(slow, data, 1, TrainingLimits(max_train_seconds=3600)).claimed_score > 0
    assert len(read_csv(data, spec, TrainingLimits(max_rows=2_000))[0]) == 2_000  # the limit itself is allowed
