"""Validations: compiled at publish to polars JSON, checked and evaluated at serve."""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
import pytest

from edge.artifact import Validation
from edge.errors import ArtifactError, BadInput, PipelineError, SpecError
from edge.validations import check_name, compile_expression, load_validations

FRAUD = 'pl.col("out.dense_1").list.get(0) > 0.9'


def validation(source: str) -> Validation:
    return Validation(source=source, expr=compile_expression(source))


def result_table() -> pa.Table:
    """The flat result table the pipeline builds, fixed-size lists as ONNX outputs give them."""
    return pa.table(
        {
            "time": pa.array([0, 0, 0], pa.timestamp("ms", tz="UTC")),
            "in.sales_count": pa.array(
                [[1357, 1247, 350], [617, 525, 513], [497, 617, 350]], pa.list_(pa.int64(), 3)
            ),
            "out.dense_1": pa.array([[0.981199], [0.0014974], None], pa.list_(pa.float32(), 1)),
        }
    )


def test_seed_examples_evaluate() -> None:
    validator = load_validations(
        {
            "fraud": validation(FRAUD),
            "too_low": validation('pl.col("out.dense_1").list.get(0) < 0.05'),
            "minimum_sales": validation('pl.col("in.sales_count").list.min() < 500'),
            "in_between_2": validation(
                '(pl.col("out.dense_1").list.get(0) < 0.9) & '
                '(pl.col("out.dense_1").list.get(0) > 0.001)'
            ),
            "batch_mean": validation('pl.col("in.sales_count").list.max().mean() > 1000'),
        },
        pl.__version__,
    )
    assert validator.names == ["fraud", "too_low", "minimum_sales", "in_between_2", "batch_mean"]
    results = validator.evaluate(result_table())
    as_lists = {name: array.to_pylist() for name, array in results.items()}
    assert as_lists == {
        "fraud": [True, False, False],  # a null output counts as no anomaly
        "too_low": [False, True, False],
        "minimum_sales": [True, False, True],
        "in_between_2": [False, True, False],
        "batch_mean": [False, False, False],  # a scalar result covers every row
    }
    assert all(array.type == pa.bool_() for array in results.values())


def test_compile_gives_polars_json() -> None:
    serialized = compile_expression(FRAUD)
    assert json.loads(serialized)["BinaryExpr"]["op"] == "Gt"
    assert validation(FRAUD).source == FRAUD


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("1 + 1", "not a polars expression"),
        ("pl.col(", "SyntaxError"),
        ('__import__("os").system("true")', "NameError"),
        ('open("/etc/passwd")', "NameError"),
        ('pl.col("a").map_elements(lambda x: x)', "AnonymousFunction"),
        ('pl.col("a").name.map(lambda n: n)', "'Map'"),
        ('pl.fold(pl.lit(0), lambda a, b: a + b, [pl.col("a")])', "FoldHorizontal"),
    ],
)
def test_compile_refuses(source: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        compile_expression(source, "v")


def test_count_and_bad_names_are_refused() -> None:
    with pytest.raises(SpecError, match="'count' is reserved"):
        check_name("count")
    with pytest.raises(SpecError, match="identifier"):
        check_name("too-low")
    check_name("too_low")
    with pytest.raises(ArtifactError, match="reserved"):
        load_validations({"count": validation(FRAUD)}, pl.__version__)


def test_anonymous_function_refused_before_deserializing(monkeypatch: pytest.MonkeyPatch) -> None:
    unsafe = pl.col("a").map_elements(lambda x: x, return_dtype=pl.Int64)
    serialized = unsafe.meta.serialize(format="json")
    assert "AnonymousFunction" in serialized  # a pickled Python function inside

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("deserialized an unchecked expression")

    monkeypatch.setattr(pl.Expr, "deserialize", never)
    with pytest.raises(ArtifactError, match="validation 'sneaky'.*AnonymousFunction"):
        load_validations({"sneaky": Validation("x", serialized)}, pl.__version__)


def test_smuggled_bytes_refused() -> None:
    pickled = {"Function": {"input": [{"Column": "a"}], "function": [128, 5, 149, 0, 46]}}
    with pytest.raises(ArtifactError, match="raw bytes under polars node 'function'"):
        load_validations({"v": Validation("x", json.dumps(pickled))}, pl.__version__)
    not_arrow = {"Literal": {"Scalar": {"List": [128, 5, 149, 0, 46]}}}
    with pytest.raises(ArtifactError, match="not Arrow IPC"):
        load_validations({"v": Validation("x", json.dumps(not_arrow))}, pl.__version__)
    with pytest.raises(ArtifactError, match="not JSON"):
        load_validations({"v": Validation("x", "{nope")}, pl.__version__)


def test_literals_lists_and_selectors_pass_the_walk() -> None:
    validator = load_validations(
        {
            "listed": validation('pl.col("x").is_in([1, 2])'),
            "dated": validation('pl.col("x").cast(pl.Decimal(10, 2)) > 1'),
            "first": validation("pl.first() > 2"),
        },
        pl.__version__,
    )
    results = validator.evaluate(pa.table({"x": [1, 3]}))
    assert results["listed"].to_pylist() == [True, False]
    assert results["dated"].to_pylist() == [False, True]
    assert results["first"].to_pylist() == [False, True]


def test_polars_version_mismatch_refused() -> None:
    with pytest.raises(ArtifactError, match=rf"polars 0\.18\.5.*polars {pl.__version__}"):
        load_validations({"fraud": validation(FRAUD)}, "0.18.5")
    with pytest.raises(ArtifactError, match="not recorded"):
        load_validations({"fraud": validation(FRAUD)}, None)
    assert load_validations({}, None).evaluate(result_table()) == {}


def test_evaluation_errors_name_the_validation() -> None:
    validator = load_validations(
        {"fraud": validation(FRAUD), "ghost": validation('pl.col("in.nope") > 1')},
        pl.__version__,
    )
    # a column the request lacks is the client's to fix (a 400), named with the validation
    with pytest.raises(BadInput, match="validation 'ghost'.*in.nope"):
        validator.evaluate(result_table())
    numeric = load_validations(
        {"num": validation('pl.col("in.sales_count").list.max()')}, pl.__version__
    )
    with pytest.raises(PipelineError, match="validation 'num'.*not true/false"):
        numeric.evaluate(result_table())
