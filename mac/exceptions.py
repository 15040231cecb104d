"""Errors a BYOP model may raise (or import to raise)."""

from __future__ import annotations


class MacError(Exception):
    """Base of the errors in this package."""


class ModelNotAssignedError(MacError):
    """`Inference.predict` was called before a model was assigned."""


class InferenceDataValidationError(MacError, ValueError):
    """The input data does not fit the model; the appliance answers it as bad input."""
