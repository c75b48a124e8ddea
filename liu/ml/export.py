"""scikit-learn -> ONNX with liu's metadata embedded, so a model file says what it needs to be run safely.

Input: one float32 tensor named "input" of shape (N, width). Classifiers output "label" and
"probabilities" (zipmap off: a plain (N, classes) tensor); regressors output "variable" (N, 1).
Metadata props (all strings, JSON where structured) carry the feature names and the spec hash, which the
consumer checks against the pipeline it built before it serves the model.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

META_KEYS = (
    "liu.name",
    "liu.version",
    "liu.feature_names",
    "liu.spec_hash",
    "liu.train_window",
    "liu.metrics",
    "liu.versions",
    "liu.outputs",
    "liu.input_width",
)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that produce and consume the model (for the model's metadata)."""
    import onnxruntime
    import skl2onnx
    import sklearn
    import talib

    return {
        "sklearn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "talib": talib.__version__,
        "numpy": np.__version__,
    }


def outputs_of(estimator: Any) -> list | str:
    """Class labels (as plain Python numbers/strings) for a classifier, "value" for a regressor."""
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        return "value"
    return [c.item() if hasattr(c, "item") else c for c in classes]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def to_onnx(estimator: Any, width: int, metadata: dict[str, Any]) -> bytes:
    """Serialized ONNX model of a fitted estimator taking float32 "input" of shape (N, width).

    `metadata` values become metadata_props (strings kept, anything else as JSON); "liu.input_width",
    "liu.outputs" and "liu.versions" are filled in when absent.
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "classes_") else None
    model = convert_sklearn(
        estimator,
        initial_types=[("input", FloatTensorType([None, width]))],
        options=options,
    )
    meta = {
        "liu.input_width": width,
        "liu.outputs": outputs_of(estimator),
        "liu.versions": library_versions(),
        **metadata,
    }
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key = key
        prop.value = _as_text(value)
    return model.SerializeToString()


def read_metadata(onnx_bytes: bytes) -> dict[str, str]:
    """metadata_props of a serialized ONNX model as a dict (values as stored: strings)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    return {p.key: p.value for p in model.metadata_props}
