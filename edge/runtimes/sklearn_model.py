"""scikit-learn models (a pickle or joblib file of an estimator or a Pipeline), run in-process
when publish did not convert them to ONNX. Needs the `sklearn` extra."""

from __future__ import annotations

import sklearn

from edge.runtimes.estimator import EstimatorRuntime


class SklearnRuntime(EstimatorRuntime):
    framework = "sklearn"

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "sklearn": sklearn.__version__}
