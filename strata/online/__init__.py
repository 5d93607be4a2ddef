"""The online store's pure half: the segment record codec and the Redis key layout.

What it offers: :class:`RecordLayout`, :func:`encode`, :func:`decode`, :func:`snapshot_layout`
and the enum value lists of the record (:mod:`strata.online.codec`); :class:`KeyLayout`
(:mod:`strata.online.keys`). The Redis client code that uses them is in :mod:`strata.io`.
"""

from strata.online.codec import RecordLayout, decode, encode, snapshot_layout
from strata.online.keys import KeyLayout

__all__ = ["KeyLayout", "RecordLayout", "decode", "encode", "snapshot_layout"]
