"""The pipeline spec file a person writes (YAML), checked field by field.

```yaml
name: ccfraud                      # DNS-style
steps:
  - model: ccfraud                 # a model step (runtime from the extension or `runtime:`)
    file: models/ccfraud.onnx
    tensor_fields: [tensor]        # optional
    batch_config: single           # optional
  - model: iris                    # another framework (edge/frameworks.py): converted to
    file: models/iris.pkl          # ONNX at publish when it can be, else run by its own
    framework: sklearn             # runtime; `runtime: onnx` insists, `runtime: sklearn` skips
    input_schema: schemas/in.arrow # sklearn, xgboost, pytorch, keras: both schemas required
    output_schema: schemas/out.arrow
  - python: postprocess            # a Python step: the file defines wallaroo_json(data)
    file: steps/post.py
  - byop: clustering               # a BYOP zip
    file: models/clustering.zip
    input_schema: schemas/in.arrow # optional Arrow schemas (IPC stream of an empty table)
  - random_split: {hash_key: id, models: [{weight: 2, model: a, file: a.onnx}, ...]}
  - shadow: {champion: {model: c, file: c.onnx}, challengers: [{model: d, file: d.onnx}]}
validations:
  fraud: pl.col("out.dense_1").list.get(0) > 0.9
deployment: {cpus: 1, memory: 512Mi, gpus: 0, arch: x86,   # the engine's
             replica_count: 1, deployment_label: "pool:edge"}  # the Helm chart's
```
The seed's other deployment settings (autoscaling, load balancer, sidekicks: `IGNORED`) are
accepted and named by `edge publish` as ignored at the edge, never dropped silently.
File paths are relative to the spec's folder. `parse_spec` returns what publishing needs:
the steps, the model entries with their files, validations as source text, deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from edge.artifact import (
    DNS_NAME,
    RUNTIMES,
    Deployment,
    ModelStep,
    RandomSplitStep,
    ShadowStep,
    SplitChoice,
    Step,
)
from edge.errors import SpecError
from edge.frameworks import FRAMEWORKS, check_schemas, find_framework

_EXTENSIONS = {".onnx": "onnx", ".zip": "tensorflow", ".py": "python"}
_MODEL_KEYS = {
    "model",
    "python",
    "byop",
    "file",
    "runtime",
    "framework",
    "tensor_fields",
    "batch_config",
    "input_schema",
    "output_schema",
}
_TOP_KEYS = {"name", "steps", "validations", "deployment"}
_ENGINE_KEYS = {"cpus", "memory", "gpus", "arch"}
_CHART_KEYS = {"replica_count", "deployment_label"}
_NO_AUTOSCALER = "an edge runs the replicas its chart or compose file gives; nothing autoscales"
_NO_SIDEKICKS = "models run inside the engine; an edge has no sidekick containers"
# The seed's deployment config settings (DeploymentConfigBuilder) an edge cannot apply: why.
IGNORED = {
    "replica_autoscale_min_max": _NO_AUTOSCALER,
    "autoscale_cpu_utilization": _NO_AUTOSCALER,
    "disable_autoscale": _NO_AUTOSCALER,
    "lb_cpus": "an edge deployment has no load balancer (the seed's enginelb)",
    "lb_memory": "an edge deployment has no load balancer (the seed's enginelb)",
    "sidekick_cpus": _NO_SIDEKICKS,
    "sidekick_memory": _NO_SIDEKICKS,
    "sidekick_env": _NO_SIDEKICKS,
    "sidekick_gpus": _NO_SIDEKICKS,
    "sidekick_arch": _NO_SIDEKICKS,
}


@dataclass
class ModelEntry:
    """One model file named in the spec, before it is hashed and versioned."""

    name: str
    file: Path  # a Hugging Face model may be a folder: publish packs it
    runtime: str  # where the original file runs when it is not converted
    tensor_fields: list[str] | None = None
    batch_config: str | None = None
    input_schema: pa.Schema | None = None
    output_schema: pa.Schema | None = None
    framework: str | None = None  # the framework named, when it is not the runtime's own
    convert: str = "no"  # "try" (fall back to `runtime`), "required" (runtime: onnx), "no"


@dataclass
class PipelineSpec:
    name: str
    steps: list[Step]
    models: dict[str, ModelEntry]
    validations: dict[str, str] = field(default_factory=dict)
    deployment: Deployment = field(default_factory=Deployment)
    # replica_count and deployment_label: the chart's (never in the pipeline definition)
    placement: dict[str, Any] = field(default_factory=dict)
    ignored: dict[str, Any] = field(default_factory=dict)  # IGNORED settings, as written

    def warnings(self) -> list[str]:
        """The lines `edge publish` prints for deployment settings it cannot fully apply."""
        lines = [
            f"Warning: deployment.{key} is accepted and ignored: {IGNORED[key]}."
            for key in self.ignored
        ]
        replicas = self.placement.get("replica_count", 1)
        if replicas > 1:
            lines.append(
                f"Warning: deployment.replica_count {replicas} applies to the Helm chart only: "
                f"it runs {replicas} engines, each with its own emptyDir /persist (no "
                "persistent volume), and refuses an edgeBundle (a bundle joins one device)."
            )
        return lines


def load_spec(path: Path) -> PipelineSpec:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path} is not valid YAML: {exc}") from exc
    return parse_spec(doc, path.parent, str(path))


def parse_spec(doc: Any, base: Path, source: str = "spec") -> PipelineSpec:
    if not isinstance(doc, dict):
        raise SpecError(f"{source}: the spec must be a mapping with name, steps, ...")
    _no_unknown(doc, _TOP_KEYS, source)
    name = doc.get("name")
    if not isinstance(name, str) or not DNS_NAME.match(name):
        raise SpecError(
            f"{source}: name {name!r} must be DNS-style: lower-case letters, digits and '-', "
            f"starting and ending with a letter or digit"
        )
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise SpecError(f"{source}: steps must be a non-empty list")
    models: dict[str, ModelEntry] = {}
    steps = [_parse_step(s, i, base, models, source) for i, s in enumerate(raw_steps)]
    validations = doc.get("validations") or {}
    if not isinstance(validations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in validations.items()
    ):
        raise SpecError(f"{source}: validations must map names to polars expression text")
    raw_deployment = doc.get("deployment") or {}
    deployment = _parse_deployment(raw_deployment, source)
    return PipelineSpec(
        name=name,
        steps=steps,
        models=models,
        validations=validations,
        deployment=deployment,
        placement=_parse_placement(raw_deployment, source),
        ignored={k: v for k, v in raw_deployment.items() if k in IGNORED},
    )


def _parse_step(
    raw: Any, index: int, base: Path, models: dict[str, ModelEntry], source: str
) -> Step:
    where = f"{source}: steps[{index}]"
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a mapping")
    if "random_split" in raw:
        _no_unknown(raw, {"random_split"}, where)
        body = raw["random_split"] or {}
        _no_unknown(body, {"hash_key", "models"}, f"{where}.random_split")
        choices = body.get("models")
        if not isinstance(choices, list) or not choices:
            raise SpecError(f"{where}.random_split.models must be a non-empty list")
        picked = []
        for j, choice in enumerate(choices):
            at = f"{where}.random_split.models[{j}]"
            if not isinstance(choice, dict):
                raise SpecError(f"{at} must be a mapping with weight, model, file")
            weight = choice.get("weight")
            if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
                raise SpecError(f"{at}.weight must be a positive number, not {weight!r}")
            rest = {k: v for k, v in choice.items() if k != "weight"}
            entry = _model_entry(rest, base, models, at)
            picked.append(SplitChoice(weight=float(weight), model=entry.name))
        hash_key = body.get("hash_key")
        if hash_key is not None and not isinstance(hash_key, str):
            raise SpecError(f"{where}.random_split.hash_key must be a column name or null")
        return RandomSplitStep(models=picked, hash_key=hash_key)
    if "shadow" in raw:
        _no_unknown(raw, {"shadow"}, where)
        body = raw["shadow"] or {}
        _no_unknown(body, {"champion", "challengers"}, f"{where}.shadow")
        if not isinstance(body.get("champion"), dict):
            raise SpecError(f"{where}.shadow.champion must be a model mapping")
        champion = _model_entry(body["champion"], base, models, f"{where}.shadow.champion")
        challengers = body.get("challengers")
        if not isinstance(challengers, list) or not challengers:
            raise SpecError(f"{where}.shadow.challengers must be a non-empty list")
        names = [
            _model_entry(c, base, models, f"{where}.shadow.challengers[{j}]").name
            for j, c in enumerate(challengers)
        ]
        return ShadowStep(champion=champion.name, challengers=names)
    return ModelStep(model=_model_entry(raw, base, models, where).name)


def _model_entry(raw: Any, base: Path, models: dict[str, ModelEntry], where: str) -> ModelEntry:
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a mapping with model and file")
    _no_unknown(raw, _MODEL_KEYS, where)
    kinds = [k for k in ("model", "python", "byop") if k in raw]
    if len(kinds) != 1:
        raise SpecError(f"{where} needs exactly one of model:, python: or byop: (its name)")
    kind = kinds[0]
    name = raw[kind]
    if not isinstance(name, str) or not DNS_NAME.match(name):
        raise SpecError(f"{where}.{kind}: model name {name!r} must be DNS-style")
    if name in models:
        raise SpecError(f"{where}.{kind}: model name {name!r} is used twice in this pipeline")
    file_text = raw.get("file")
    if not isinstance(file_text, str):
        raise SpecError(f"{where}.file is required (path relative to the spec file)")
    file = (base / file_text).resolve()
    requested = raw.get("runtime")
    framework_name = raw.get("framework")
    if framework_name is None:
        framework_name = requested or (kind if kind != "model" else _EXTENSIONS.get(file.suffix))
        if framework_name not in RUNTIMES:
            raise SpecError(
                f"{where}.runtime: {framework_name!r} is not one of {list(RUNTIMES)} (set "
                f"runtime: or framework: for a file ending {file.suffix!r})"
            )
        at = f"{where}.runtime"
    else:
        at = f"{where}.framework"
    if not isinstance(framework_name, str):
        raise SpecError(f"{at} must be a name, not {framework_name!r}")
    framework = find_framework(framework_name, at)
    if kind != "model" and framework.name != kind:
        raise SpecError(f"{at}: a {kind}: step is framework {kind!r}, not {framework.name!r}")
    allowed = {framework.native, "onnx"} if framework.converter else {framework.native}
    if requested is not None and requested not in allowed:
        raise SpecError(
            f"{where}.runtime: a {framework.name} model runs on {sorted(allowed)}, not "
            f"{requested!r}"
        )
    folder_ok = "/" in framework.suffixes
    if not (file.is_file() or (folder_ok and file.is_dir())):
        raise SpecError(f"{where}.file: model file {file_text!r} not found (looked at {file})")
    checked = framework.converter or folder_ok
    if checked and not (file.suffix in framework.suffixes or (folder_ok and file.is_dir())):
        endings = " or ".join(s if s != "/" else "a folder" for s in framework.suffixes)
        raise SpecError(f"{where}.file: a {framework.name} model is {endings}, not {file_text!r}")
    runtime = requested or framework.native
    convert = "no"
    if framework.converter:
        convert = {None: "try", "onnx": "required"}.get(requested, "no")
        runtime = framework.native
    input_schema, output_schema = check_schemas(
        framework,
        _schema(raw.get("input_schema"), base, f"{where}.input_schema"),
        _schema(raw.get("output_schema"), base, f"{where}.output_schema"),
        where,
    )
    tensor_fields = raw.get("tensor_fields")
    if tensor_fields is not None and (
        not isinstance(tensor_fields, list) or not all(isinstance(t, str) for t in tensor_fields)
    ):
        raise SpecError(f"{where}.tensor_fields must be a list of column names")
    batch_config = raw.get("batch_config")
    if batch_config not in (None, "single"):
        raise SpecError(f"{where}.batch_config must be 'single' or absent, not {batch_config!r}")
    entry = ModelEntry(
        name=name,
        file=file,
        runtime=runtime,
        tensor_fields=tensor_fields,
        batch_config=batch_config,
        input_schema=input_schema,
        output_schema=output_schema,
        framework=None
        if framework.name in FRAMEWORKS and not framework.converter
        else framework.name,
        convert=convert,
    )
    models[name] = entry
    return entry


def _schema(value: Any, base: Path, where: str) -> pa.Schema | None:
    if value is None:
        return None
    path = (base / str(value)).resolve()
    try:
        with pa.OSFile(str(path)) as source:
            try:
                return pa.ipc.open_stream(source).schema
            except pa.ArrowInvalid:
                pass
        with pa.OSFile(str(path)) as source:
            return pa.ipc.open_file(source).schema
    except (OSError, pa.ArrowInvalid) as exc:
        raise SpecError(f"{where}: {value!r} is not an Arrow IPC file or stream ({exc})") from exc


def _parse_deployment(raw: Any, source: str) -> Deployment:
    where = f"{source}: deployment"
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a mapping")
    _no_unknown(raw, _ENGINE_KEYS | _CHART_KEYS | set(IGNORED), where)
    deployment = Deployment(**{k: v for k, v in raw.items() if k in _ENGINE_KEYS})
    if not isinstance(deployment.cpus, int | float) or deployment.cpus <= 0:
        raise SpecError(f"{where}.cpus must be a positive number")
    if not isinstance(deployment.gpus, int) or deployment.gpus < 0:
        raise SpecError(f"{where}.gpus must be a whole number >= 0")
    if deployment.arch not in ("x86", "arm"):
        raise SpecError(f"{where}.arch must be 'x86' or 'arm', not {deployment.arch!r}")
    if not isinstance(deployment.memory, str):
        raise SpecError(f"{where}.memory must be a Kubernetes quantity like 512Mi")
    return deployment


def _parse_placement(raw: dict[str, Any], source: str) -> dict[str, Any]:
    from edge.chart import NODE_LABEL

    where = f"{source}: deployment"
    replicas = raw.get("replica_count", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 1000:
        raise SpecError(f"{where}.replica_count must be a whole number from 1 to 1000")
    label = raw.get("deployment_label")
    if label is not None and not (isinstance(label, str) and NODE_LABEL.fullmatch(label)):
        raise SpecError(
            f"{where}.deployment_label must be a node label key:value such as "
            f"doc-gpu-label:true, not {label!r}"
        )
    placement: dict[str, Any] = {"replica_count": replicas}
    if label:
        placement["deployment_label"] = label
    return placement


def _no_unknown(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
