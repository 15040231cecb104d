"""Configuration handed to `InferenceBuilder.create`."""

from mac.config.inference import CustomInferenceConfig, InferenceConfig

__all__ = ["CustomInferenceConfig", "InferenceConfig"]
