"""`InferenceBuilder`: builds an `Inference`, loads its model and assigns it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from mac.config.inference import CustomInferenceConfig
from mac.inference import Inference


class InferenceBuilder(ABC):
    """Exactly one concrete subclass per BYOP zip; the appliance calls `create(config)`."""

    @property
    @abstractmethod
    def inference(self) -> Any:
        """The `Inference` subclass this builder creates."""

    @abstractmethod
    def create(self, config: CustomInferenceConfig) -> Inference:
        """Instantiate the inference, load its model from `config.model_path`, assign it."""
