"""Request bodies to Arrow tables, result tables to response bodies. No HTTP in here.

decode.py         pandas-records JSON / Arrow IPC requests to Arrow tables
tensor_text.py    ... a large body of flat numeric rows, without a Python object per number
shape.py          the seed's dataset selection, content negotiation (both servers)
records.py        result tables to pandas-records JSON (small results, per row)
records_large.py  ... large results, column by column
arrow.py          result tables to Arrow IPC files
"""

from edge.codecs.arrow import arrow_file, encode_arrow
from edge.codecs.decode import decode_arrow, decode_records
from edge.codecs.records import SMALL, RecordInfo, encode_records
from edge.codecs.shape import (
    ARROW_FILE_TYPE,
    ARROW_STREAM_TYPE,
    DATASETS,
    JSON_TYPE,
    Shape,
    media_type,
    parse_shape,
    request_decoder,
    select_datasets,
    shape,
    wants_arrow,
)

__all__ = [
    "ARROW_FILE_TYPE",
    "ARROW_STREAM_TYPE",
    "DATASETS",
    "JSON_TYPE",
    "SMALL",
    "RecordInfo",
    "Shape",
    "arrow_file",
    "decode_arrow",
    "decode_records",
    "encode_arrow",
    "encode_records",
    "media_type",
    "parse_shape",
    "request_decoder",
    "select_datasets",
    "shape",
    "wants_arrow",
]
