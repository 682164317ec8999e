"""Byte checksums of the field protocols, compiled: the per-byte loops are the hot part of decoding.

* ``crc_hj212``: HJ 212-2017 Appendix A. Unlike CRC-16/MODBUS the register is shifted right by 8
  *before* the byte is folded in (``reg = (reg >> 8) ^ byte``), so only 8 bits of state survive each
  byte and the result takes one of 256 values. It is the algorithm the standard prints, and what the
  field sends.
* ``crc_modbus``: plain CRC-16/MODBUS (``reg ^= byte``), which some data loggers publish as HJ 212.
* ``xor_bytes``: the JT/T 808 check code, XOR of every byte.

All take ``bytes`` (read-only buffer of uint8) so callers pass the packet slice without a copy.
Both CRCs are table-driven over the reflected polynomial 0xA001; ``_CRC_TABLE`` is a true constant
(numba freezes it into the compiled code), built by the same bit loop the standard prints.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types

_BYTES = types.Bytes(types.uint8, 1, "C", readonly=True)


def _reflected_table(poly: int) -> np.ndarray:
    table = np.empty(256, dtype=np.int64)
    for v in range(256):
        reg = v
        for _ in range(8):
            reg = (reg >> 1) ^ poly if reg & 1 else reg >> 1
        table[v] = reg
    return table


_CRC_TABLE = _reflected_table(0xA001)


@njit(types.int64(_BYTES), cache=True, nogil=True)
def crc_hj212(data):
    # reg = (reg >> 8) ^ b leaves a value below 256; the 8 shift rounds on it are one table lookup.
    reg = 0xFFFF
    for b in data:
        reg = _CRC_TABLE[(reg >> 8) ^ b]
    return reg


@njit(types.int64(_BYTES), cache=True, nogil=True)
def crc_modbus(data):
    reg = 0xFFFF
    for b in data:
        reg = (reg >> 8) ^ _CRC_TABLE[(reg ^ b) & 0xFF]
    return reg


@njit(types.int64(_BYTES), cache=True, nogil=True)
def xor_bytes(data):
    acc = 0
    for b in data:
        acc ^= b
    return acc
