"""numpy arrays on the wire: msgpack extension type 1.

The extension data is itself a msgpack array ``[dtype, shape, raw]``:
dtype the numpy type string (only ``"<f8"``, little-endian float64, is
accepted), shape a list of ints, raw the C-order bytes. Never lists of floats.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from .errors import ProtocolError

EXT_NDARRAY = 1
WIRE_DTYPE = "<f8"
MAX_ROWS = 1_000_000


def pack_default(obj: Any) -> Any:
    """msgpack ``default=`` hook: float arrays become extension 1."""
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj, dtype=WIRE_DTYPE)
        return msgpack.ExtType(EXT_NDARRAY, msgpack.packb([WIRE_DTYPE, list(arr.shape), arr.tobytes()]))
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} in a ResCoin message")


def ext_hook(code: int, data: bytes) -> Any:
    """msgpack ``ext_hook=``: extension 1 back to a read-only float64 array."""
    if code != EXT_NDARRAY:
        raise ProtocolError(f"unknown msgpack extension type {code}", "payload")
    try:
        dtype, shape, raw = msgpack.unpackb(
            data, raw=False, max_array_len=3, max_map_len=0, max_ext_len=0, max_str_len=16, max_bin_len=len(data)
        )
    except Exception as exc:
        raise ProtocolError(f"array extension is not [dtype, shape, raw] ({type(exc).__name__})", "payload") from exc
    if not isinstance(dtype, str) or dtype != WIRE_DTYPE:
        shown = repr(dtype)[:20] if isinstance(dtype, str) else type(dtype).__name__
        raise ProtocolError(f"array dtype must be {WIRE_DTYPE!r}, got {shown}", "payload")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_ROWS for d in shape)
    ):
        raise ProtocolError(f"array shape must be 1 or 2 dims of at most {MAX_ROWS}, got {shape!r:.60}", "payload")
    if not isinstance(raw, bytes):
        raise ProtocolError("array data must be bytes", "payload")
    count = 1
    for dim in shape:
        count *= dim
    if len(raw) != count * 8:
        raise ProtocolError(f"array of shape {shape} needs {count * 8} bytes, got {len(raw)}", "payload")
    return np.frombuffer(raw, dtype=WIRE_DTYPE).reshape(shape)


def check_matrix(value: Any, field: str, rows: int, cols: int | None = 4, lo: float | None = 0.0) -> np.ndarray:
    """A float64 array of shape (rows, cols) (or (rows,) if cols is None), finite, >= lo."""
    if not isinstance(value, np.ndarray):
        raise ProtocolError(f"must be a float64 array (msgpack ext {EXT_NDARRAY})", field)
    shape = (rows,) if cols is None else (rows, cols)
    if value.shape != shape:
        raise ProtocolError(f"must have shape {shape}, got {value.shape}", field)
    if not np.isfinite(value).all():
        raise ProtocolError("contains NaN or infinity", field)
    if lo is not None and value.size and value.min() < lo:
        raise ProtocolError(f"contains values below {lo}", field)
    return value
