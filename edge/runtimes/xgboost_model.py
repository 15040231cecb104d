"""XGBoost models (a pickle of an `XGBClassifier` / `XGBRegressor`, the seed's file type; XGB
files are not taken), run in-process when publish did not convert them to ONNX. Needs the
`xgboost` extra."""

from __future__ import annotations

from typing import Any

import numpy as np
import xgboost

from edge.errors import ArtifactError
from edge.runtimes.estimator import EstimatorRuntime


class XgboostRuntime(EstimatorRuntime):
    framework = "xgboost"

    def check_model(self) -> None:
        if isinstance(self.model, xgboost.Booster):
            assert self.output_schema is not None
            if len(self.output_schema) != 1:
                raise ArtifactError(
                    f"{self.what}: a bare Booster gives one output (its predict); the output "
                    f"schema has {self.output_schema.names}"
                )
            return
        super().check_model()

    def threads(self, count: int) -> None:
        if isinstance(self.model, xgboost.Booster):
            self.model.set_param({"nthread": count})
        else:
            self.model.set_params(n_jobs=count)

    def call(self, method: str, features: np.ndarray) -> Any:
        if isinstance(self.model, xgboost.Booster):
            return self.model.predict(xgboost.DMatrix(features))
        return super().call(method, features)

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "xgboost": xgboost.__version__}
