"""The one error type every codec raises; ``reason`` is a short stable code stored in dead letters."""
from __future__ import annotations

BAD_TOPIC = "bad_topic"
# BAD_TOPIC's detail for a stream not in the registry; a cluster worker meeting it reloads the registry
# before dead-lettering (the stream may have been created since it last loaded it)
UNKNOWN_STREAM = "unknown stream"


class CodecError(ValueError):
    """A packet or payload that cannot be accepted. ``reason`` e.g. ``bad_crc``, ``length_mismatch``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def parse_hex(text: str) -> bytes:
    """Hex as people paste it (``0x``, spaces, line breaks, ``:``/``-``/``,`` separators) -> bytes;
    ``bad_hex`` otherwise."""
    clean = text.replace("0x", "").replace("0X", "")
    clean = "".join(ch for ch in clean if ch not in " \t\r\n:-,")
    try:
        return bytes.fromhex(clean)
    except ValueError as exc:
        raise CodecError("bad_hex", str(exc)) from None
