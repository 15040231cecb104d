#!/usr/bin/env python3
"""Calibration: a bare Starlette handler around the example model, no logging, no checks.

What this machine can do for a single-row pandas-records request with nothing of ours in the
way (the guide's "bare Starlette" figure). Serve it, then drive it with wrk as bench/serve.py
does:

    /work/venv/bin/python bench/bare_starlette.py --port 18099 &
    WRK_BODY_FILE=examples/breast-cancer/data/one-row.json \\
        wrk -t1 -c1 -d8s -s bench/post.lua http://127.0.0.1:18099/pipelines/breast-cancer

Measured 2026-11-23 on this machine, two runs an hour apart: c=1 p50 0.19-0.32 ms,
2,500-4,900 req/s; c=8 ~4,800 req/s (`edge serve --no-logging`: ~1,000 req/s at c=1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

MODEL = Path(__file__).resolve().parent.parent / "examples/breast-cancer/models/breast-cancer.onnx"


def make_app(model: Path) -> Starlette:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    async def infer(request: Request) -> Response:
        rows = orjson.loads(await request.body())
        features = np.array([row["tensor"] for row in rows], dtype=np.float32)
        labels, probabilities = session.run(None, {"X": features})
        out = [
            {"time": 0, "in": row, "out": {"label": int(label), "probabilities": p.tolist()}}
            for row, label, p in zip(rows, labels, probabilities, strict=True)
        ]
        return Response(orjson.dumps(out), media_type="application/json")

    return Starlette(routes=[Route("/pipelines/breast-cancer", infer, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18099)
    parser.add_argument("--model", type=Path, default=MODEL)
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.model),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
