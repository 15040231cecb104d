"""What the scikit-learn and XGBoost runtimes share: a pickled estimator with `predict` (and
`predict_proba`), fed the seed's way, one array of features per row.

The input schema has one field, a fixed-size list of numbers (`inputs`); the output schema's
first field is `predict`'s answer, an optional second field `predict_proba`'s. Loading a
pickle runs code the pickle names, so the file is unpickled only from bytes whose sha256 is the
layer digest (`verified_bytes`): what the publisher packed, and nothing else.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import pyarrow as pa

from edge.errors import ArtifactError, PipelineError
from edge.runtimes.base import (
    Runtime,
    conform,
    output_table,
    schema_inputs,
    tensor_feed,
    verified_bytes,
)


class EstimatorRuntime(Runtime):
    """Base of the pickled-estimator runtimes; subclasses name the framework."""

    framework = "estimator"
    model: Any

    def load(self) -> None:
        self.what = f"{self.framework} model {self.info.name!r} (layer {self.info.digest})"
        self.inputs = schema_inputs(self.info.arrow_schema("input"), self.what)
        self.output_schema = self.info.arrow_schema("output")
        if self.output_schema is None or not 1 <= len(self.output_schema) <= 2:
            raise ArtifactError(f"{self.what}: needs an output schema of one or two fields")
        self.model = self.unpickle(verified_bytes(self.path, self.info, self.what))
        self.check_model()
        self.threads(max(1, self.context.threads))

    def unpickle(self, data: bytes) -> Any:
        try:
            import joblib  # comes with scikit-learn; reads plain pickles too

            load: Any = joblib.load
        except ImportError:
            load = pickle.load
        try:
            return load(io.BytesIO(data))
        except Exception as exc:  # whatever the pickle's own classes raise
            raise ArtifactError(
                f"{self.what}: cannot unpickle {self.path.name}: {type(exc).__name__}: {exc}"
            ) from exc

    def check_model(self) -> None:
        assert self.output_schema is not None
        wants = ["predict", "predict_proba"][: len(self.output_schema)]
        missing = [name for name in wants if not callable(getattr(self.model, name, None))]
        if missing:
            raise ArtifactError(
                f"{self.what}: the unpickled {type(self.model).__name__} has no {missing[0]}() "
                f"for output field {self.output_schema.names[wants.index(missing[0])]!r}"
            )

    def threads(self, count: int) -> None:
        """Give the model the appliance's thread budget (estimators that take one)."""
        if "n_jobs" in getattr(self.model, "__dict__", {}):
            self.model.n_jobs = count

    def predict(self, table: pa.Table) -> pa.Table:
        step = self.info.name
        assert self.output_schema is not None
        (features,) = tensor_feed(table, self.inputs, self.info.tensor_fields, step).values()
        names = self.output_schema.names
        try:
            outputs = {names[0]: self.call("predict", features)}
            if len(names) == 2:
                outputs[names[1]] = self.call("predict_proba", features)
        except Exception as exc:  # the estimator's own errors
            raise PipelineError(
                f"{self.framework} predict raised {type(exc).__name__}: {exc}", step=step
            ) from exc
        return conform(output_table(outputs, table.num_rows, step), self.output_schema, step)

    def call(self, method: str, features: np.ndarray) -> Any:
        return getattr(self.model, method)(features)

    def describe(self) -> dict[str, Any]:
        return {"framework": self.info.framework, "estimator": type(self.model).__name__}
