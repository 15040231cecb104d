"""The data a BYOP model takes and returns: one numpy array per named field."""

from __future__ import annotations

import numpy as np

InferenceData = dict[str, np.ndarray]
