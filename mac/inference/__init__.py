"""`Inference`: serves predictions from one assigned model on a dict of numpy arrays.

A subclass names the model types it accepts (`expected_model_types`), may override the
`model` setter (typically calling `_raise_error_if_model_is_wrong_type` first) and implements
`_predict`. `predict` refuses to run until a model has been assigned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from mac.exceptions import ModelNotAssignedError
from mac.types import InferenceData


class Inference(ABC):
    """One model behind `predict(InferenceData) -> InferenceData`."""

    _model: Any = None

    @property
    @abstractmethod
    def expected_model_types(self) -> set[Any]:
        """The classes an assigned model may be an instance of."""

    @property
    def model(self) -> Any | None:
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        self._raise_error_if_model_is_wrong_type(model)
        self._model = model

    def predict(self, input_data: InferenceData) -> InferenceData:
        """Run `_predict` on `input_data`; raises `ModelNotAssignedError` without a model."""
        self._raise_error_if_model_is_not_assigned()
        return self._predict(input_data)

    @abstractmethod
    def _predict(self, input_data: InferenceData) -> InferenceData:
        """Compute the outputs, one numpy array per output field."""

    def _raise_error_if_model_is_not_assigned(self) -> None:
        if self.model is None:
            raise ModelNotAssignedError(
                f"{type(self).__name__}: no model assigned; set `model` before predicting"
            )

    def _raise_error_if_model_is_wrong_type(self, model: Any) -> None:
        expected = self.expected_model_types
        if callable(expected) and not isinstance(expected, set | frozenset | list | tuple):
            expected = expected()  # written as a plain method rather than a property
        allowed = tuple(expected)
        if not allowed or not isinstance(model, allowed):
            names = ", ".join(sorted(t.__name__ for t in allowed)) or "nothing"
            raise TypeError(
                f"{type(self).__name__} expects a model of type {names}, got {type(model).__name__}"
            )
