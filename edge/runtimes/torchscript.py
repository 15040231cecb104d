"""PyTorch models in TorchScript (`.pt` / `.pth`, the seed's format), run in-process with
`torch.jit.load` on the CPU when publish did not convert them to ONNX. Needs the `pytorch`
extra.

Each input schema field feeds the model's `forward` one tensor, in order; each output schema
field takes one of the outputs `forward` returns (a tensor, or a tuple or list of them), in
order. TorchScript archives are loaded by TorchScript's own loader, not by pickle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from edge.errors import ArtifactError, PipelineError
from edge.runtimes.base import Runtime, conform, output_table, schema_inputs, tensor_feed


class TorchScriptRuntime(Runtime):
    module: Any

    def load(self) -> None:
        what = f"PyTorch model {self.info.name!r} (layer {self.info.digest})"
        self.inputs = schema_inputs(self.info.arrow_schema("input"), what)
        self.output_schema = self.info.arrow_schema("output")
        if self.output_schema is None or not len(self.output_schema):
            raise ArtifactError(f"{what}: the definition carries no output schema")
        if torch.get_num_threads() != max(1, self.context.threads):
            torch.set_num_threads(max(1, self.context.threads))
        try:
            self.module = torch.jit.load(str(self.path), map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError for anything not TorchScript
            raise ArtifactError(
                f"{what}: not a TorchScript model (save it with torch.jit.script(model).save"
                f"(path)): {type(exc).__name__}: {str(exc).splitlines()[0]}"
            ) from exc
        self.module.eval()

    def predict(self, table: pa.Table) -> pa.Table:
        step = self.info.name
        assert self.output_schema is not None
        feed = tensor_feed(table, self.inputs, self.info.tensor_fields, step)
        try:
            with torch.inference_mode():
                result = self.module(
                    *(
                        torch.from_numpy(np.require(v, requirements=["C", "W"]))
                        for v in feed.values()
                    )
                )
        except Exception as exc:
            message = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            raise PipelineError(
                f"the TorchScript model raised {type(exc).__name__}: {message}", step=step
            ) from exc
        names = self.output_schema.names
        if isinstance(result, Mapping):
            values = [result.get(name) for name in names]
        elif isinstance(result, Sequence):
            values = list(result)
        else:
            values = [result]
        if len(values) != len(names) or any(v is None for v in values):
            raise PipelineError(
                f"forward returned {len(values)} output(s) for the output schema's {names}",
                step=step,
            )
        outputs = {name: np.asarray(value) for name, value in zip(names, values, strict=True)}
        return conform(output_table(outputs, table.num_rows, step), self.output_schema, step)

    def close(self) -> None:
        self.module = None

    def describe(self) -> dict[str, Any]:
        return {"framework": self.info.framework, "torch": torch.__version__}
