"""`CustomInferenceConfig`: where the unzipped BYOP folder is."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass


@dataclass
class InferenceConfig:
    """Base of inference configurations."""


@dataclass
class CustomInferenceConfig(InferenceConfig):
    """`model_path` is the unzipped model folder; artifacts are loaded relative to it."""

    model_path: pathlib.Path
