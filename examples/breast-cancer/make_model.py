"""Train the example model: StandardScaler + LogisticRegression on scikit-learn's bundled
breast-cancer data (30 features), converted to ONNX with skl2onnx. Also writes sample
request bodies. Usage: python make_model.py [OUT_DIR] (default: this folder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def main(out: Path) -> None:
    features, labels = load_breast_cancer(return_X_y=True)
    features = features.astype(np.float32)
    classifier = LogisticRegression(max_iter=1000)
    model = make_pipeline(StandardScaler(), classifier).fit(features, labels)
    onnx = to_onnx(
        model, features[:1], options={id(classifier): {"zipmap": False}}, target_opset=17
    )
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "models" / "breast-cancer.onnx").write_bytes(onnx.SerializeToString())
    (out / "data").mkdir(exist_ok=True)
    one = [{"tensor": features[0].tolist()}]
    (out / "data" / "one-row.json").write_text(json.dumps(one))
    many = np.resize(features, (10_000, 30))
    (out / "data" / "10k-rows.json").write_text(
        json.dumps([{"tensor": row} for row in many.tolist()])
    )
    np.save(out / "data" / "10k-rows.npy", many)
    print(f"wrote {out / 'models' / 'breast-cancer.onnx'} and sample data under {out / 'data'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
