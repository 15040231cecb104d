"""Our own implementation of the interface BYOP ("bring your own predict") zips import.

Zips written for Wallaroo import `mac.inference.Inference`,
`mac.inference.creation.InferenceBuilder`, `mac.config.inference.CustomInferenceConfig` and
`mac.types.InferenceData`; these modules provide the same names and behaviour so such a zip
runs unchanged on the appliance (see `edge.runtimes.byop`).
"""
