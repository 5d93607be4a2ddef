"""Arrow <-> numpy helpers shared by the training modules (private to the package)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

F32 = pa.float32()
F64 = pa.float64()


def f64_of(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric or timestamp column as float64 numpy, NaN for null (timestamps in ms)."""
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.timestamp("ms", tz=col.type.tz), safe=False).cast(pa.int64())
    arr = col.cast(F64)
    return np.array(arr.to_numpy(zero_copy_only=False), dtype=np.float64)  # writable copy


def f32_array(values: np.ndarray) -> pa.Array:
    """float32 Arrow array with null where ``values`` has no finite float32 value (NaN, inf,
    or beyond float32's range): a model input is a number or missing, never inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.asarray(values, dtype=np.float64).astype(np.float32)
    bad = ~np.isfinite(v)
    return pa.array(v, type=F32, mask=bad if bad.any() else None)
