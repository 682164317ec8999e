"""The one error type every codec raises; ``reason`` is a short stable code stored in dead letters."""
from __future__ import annotations


class CodecError(ValueError):
    """A packet or payload that cannot be accepted. ``reason`` e.g. ``bad_crc``, ``length_mismatch``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
