"""Validations: named polars expressions over the result columns (`in.*`, `out.*`); True
means an anomaly.

At publish, `check_name` and `compile_expression` turn the text a person wrote into polars'
JSON serialization (never pickle). At serve, `load_validations` walks each JSON tree against
an allow-list of node kinds *before* polars deserializes it: polars' JSON can carry pickled
Python functions (`AnonymousFunction`, `name.map`, `fold`, ...) that would run when the
expression is evaluated. The format is not stable across polars versions, so the version
recorded at publish must match the appliance's. `Validator.evaluate` then runs them on the
flat result table, one boolean array per validation.
"""

from __future__ import annotations

import io
import json
import keyword
from typing import Any

import polars as pl
import pyarrow as pa

from edge.artifact import Validation
from edge.errors import ArtifactError, BadInput, PipelineError, SpecError

RESERVED = "count"  # `anomaly.count` counts the true validations
# Every object key polars writes for expressions made of columns, literals, operators and
# the built-in namespaces. Keys that carry Python code (AnonymousFunction, Map,
# FoldHorizontal, ReduceHorizontal, ...) or Python objects (Object) are absent on purpose.
ALLOWED_NODES = frozenset(
    """
    Agg Alias All Any AnyOf Array ArrayExpr Binary BinaryExpr Boolean ByDType ByIndex ByName
    Cast Categorical Clip Column Contains Count CumSum Date Datetime Decimal Diff Difference
    Duration Dyn Element Enum Eval Explode Extract FieldByName Filter First Float Float32
    Float64 Function Gather Get Hash Implode Int Int8 Int16 Int32 Int64 IsBetween IsClose IsIn
    Join KeepName Last Len List ListExpr Literal Matches Max Mean MeanHorizontal Median Min
    Mode NUnique Null Over Pow Prefix Quantile Rank RenameAlias Replace RollingExpr Round
    Scalar Selector Series Slice Sort Std String StringExpr Struct StructExpr Suffix Sum
    SumHorizontal TemporalExpr Ternary Time ToArray TopK UInt8 UInt16 UInt32 UInt64 Unique
    Var Wildcard
    abs_tol by center closed decimals descending dtype empty_as_null evaluation expr falsy
    fn_params function has_max has_min idx ignore_nulls include_nulls indices inner input
    keep_nulls left length limit literal maintain_order mapping method min_periods mode
    multithreaded n name names namespace nans_equal null_on_oob nulls_equal nulls_last offset
    op options order_by partition_by physical predicate propagate_nans rel_tol returns_scalar
    reverse right seed strict strings truthy variant weights window_size
    """.split()
)
# Lists of integers are allowed only here: plain numbers, and literal data (Arrow IPC bytes
# for lists, series and enum categories; raw bytes for binary literals).
_NUMBER_LISTS = {"indices", "Decimal"}
_IPC_BYTES = {"List", "Series", "Array", "strings"}


def check_name(name: str) -> None:
    """Refuse names that cannot become `anomaly.<name>`; `count` is taken (the seed)."""
    if name == RESERVED:
        raise SpecError("validation name 'count' is reserved (anomaly.count); pick another name")
    if not name.isidentifier() or keyword.iskeyword(name):
        raise SpecError(f"validation name {name!r} must be a Python identifier")


def compile_expression(source: str, name: str | None = None) -> str:
    """Evaluate `source` with only `pl` in scope; return the expression's polars JSON."""
    label = f"validation {name!r}" if name else "validation"
    try:
        value = eval(source, {"pl": pl, "__builtins__": {}})
    except Exception as exc:
        raise SpecError(
            f"{label}: {source!r} does not evaluate: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(value, pl.Expr):
        raise SpecError(f"{label}: {source!r} is a {type(value).__name__}, not a polars expression")
    try:
        serialized = value.meta.serialize(format="json")
        check_tree(json.loads(serialized), label)
    except ArtifactError as exc:
        raise SpecError(str(exc)) from None
    except Exception as exc:
        raise SpecError(f"{label}: {source!r} cannot be serialized: {exc}") from exc
    return serialized


def check_tree(node: Any, label: str, in_literal: bool = False) -> None:
    """Refuse any object key outside `ALLOWED_NODES` and raw bytes outside literal data."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in ALLOWED_NODES:
                raise ArtifactError(
                    f"{label}: polars node {key!r} is not allowed in a validation (Python "
                    f"functions and objects are refused; use built-in expressions)"
                )
            if _is_int_list(value):
                if key in _IPC_BYTES and in_literal:
                    _check_ipc(value, label)
                elif key not in _NUMBER_LISTS and not (key == "Binary" and in_literal):
                    raise ArtifactError(f"{label}: raw bytes under polars node {key!r} refused")
            else:
                check_tree(value, label, in_literal or key == "Literal")
    elif isinstance(node, list):
        for item in node:
            check_tree(item, label, in_literal)
    elif node is not None and not isinstance(node, str | int | float):  # bool is an int
        raise ArtifactError(f"{label}: unexpected JSON value {node!r}")


class Validator:
    """The pipeline's validations, deserialized once, evaluated per request."""

    def __init__(self, expressions: dict[str, pl.Expr], sources: dict[str, str]) -> None:
        self.expressions = expressions
        self.sources = sources  # the text each was written as, for messages and logs

    @property
    def names(self) -> list[str]:
        return list(self.expressions)

    def evaluate(self, table: pa.Table) -> dict[str, pa.Array]:
        """One boolean array per validation over the flat result table (null counts False)."""
        if not self.expressions:
            return {}
        frame = pl.from_arrow(_lists_not_arrays(table))
        assert isinstance(frame, pl.DataFrame)
        exprs = [expr.alias(name) for name, expr in self.expressions.items()]
        try:
            results = frame.select(exprs)
        except Exception:
            results = None  # find the one that failed, to name it
        return {name: self._one(frame, name, results, table.num_rows) for name in self.names}

    def _one(self, frame: pl.DataFrame, name: str, results: Any, rows: int) -> pa.Array:
        label = f"validation {name!r} ({self.sources[name]})"
        try:
            series = (
                results if results is not None else frame.select(self.expressions[name].alias(name))
            ).get_column(name)
        except pl.exceptions.ColumnNotFoundError as exc:
            # the request lacks a column the validation reads (e.g. a lone input column sent
            # under another name): the client's to fix
            raise BadInput(
                f"{label} reads a column the request does not have: {str(exc).splitlines()[0]}"
            ) from exc
        except Exception as exc:
            raise PipelineError(f"{label} failed: {type(exc).__name__}: {exc}") from exc
        if series.dtype == pl.Null:
            series = series.cast(pl.Boolean)
        if series.dtype != pl.Boolean:
            raise PipelineError(f"{label} gives {series.dtype} values, not true/false")
        if series.len() == 1 and rows != 1:
            series = series.extend_constant(series[0], rows - 1)
        if series.len() != rows:
            raise PipelineError(f"{label} gives {series.len()} values for {rows} rows")
        array = series.fill_null(False).to_arrow()
        return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def load_validations(validations: dict[str, Validation], polars_version: str | None) -> Validator:
    """Check and deserialize the definition's validations; `ArtifactError` names the bad one."""
    if validations and polars_version != pl.__version__:
        raise ArtifactError(
            f"validations were serialized with polars {polars_version or '(not recorded)'} but "
            f"this appliance has polars {pl.__version__}; polars' expression format differs "
            f"between versions: publish the pipeline again with polars {pl.__version__}"
        )
    expressions = {}
    for name, validation in validations.items():
        label = f"validation {name!r}"
        try:
            check_name(name)
        except SpecError as exc:
            raise ArtifactError(str(exc)) from None
        try:
            tree = json.loads(validation.expr)
        except ValueError as exc:
            raise ArtifactError(f"{label}: serialized expression is not JSON: {exc}") from exc
        check_tree(tree, label)
        try:
            expressions[name] = pl.Expr.deserialize(io.StringIO(validation.expr), format="json")
        except Exception as exc:
            raise ArtifactError(f"{label}: polars cannot read the expression: {exc}") from exc
    return Validator(expressions, {n: v.source for n, v in validations.items()})


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)


def _check_ipc(data: list[int], label: str) -> None:
    """Literal lists and series are Arrow IPC: refuse extension types (polars' Object)."""
    try:
        schema = pa.ipc.open_stream(bytes(data)).schema
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise ArtifactError(f"{label}: literal data is not Arrow IPC: {exc}") from exc
    fields = list(schema)
    while fields:
        field = fields.pop()
        metadata = field.metadata or {}
        if isinstance(field.type, pa.ExtensionType) or any(
            k.startswith(b"ARROW:extension") for k in metadata
        ):
            raise ArtifactError(f"{label}: literal of extension type {field.type} refused")
        fields.extend(field.type.field(i) for i in range(field.type.num_fields))


def _lists_not_arrays(table: pa.Table) -> pa.Table:
    """FixedSizeList columns become polars Arrays, on which `.list.*` fails: make them lists."""
    for i, field in enumerate(table.schema):
        wanted = _as_list(field.type)
        if wanted != field.type:
            table = table.set_column(i, field.with_type(wanted), table.column(i).cast(wanted))
    return table


def _as_list(t: pa.DataType) -> pa.DataType:
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_as_list(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_as_list(t.value_type)))
    return t
