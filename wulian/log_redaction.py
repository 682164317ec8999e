"""Keep secrets out of every log line: API keys, HJ 212 passwords, MQTT/DSN passwords are masked by a
filter on the root handlers, whatever module logged them."""
from __future__ import annotations

import logging
import re

_PATTERNS = [
    (re.compile(r"\bwl_([0-9a-f]{12})_[A-Za-z0-9_\-]+"), r"wl_\1_***"),  # API keys: keep the public id
    (re.compile(r"(PW=)[^;&\s]*"), r"\1***"),  # HJ 212 access password in a header
    (re.compile(r"(?i)(password[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&]+"), r"\1***"),
    (re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),  # DSN with a password
    (re.compile(r"(?i)(auth[_ ]?code[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&]+"), r"\1***"),  # JT/T 808 auth code
]


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def install() -> None:
    """Attach the filter to every root handler (call after logging.basicConfig)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the context fields ingest attaches (device, topic, reason...)."""

    CONTEXT = ("device", "topic", "reason", "region", "stream", "batch", "job")

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        doc = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in self.CONTEXT:
            if key in record.__dict__:
                doc[key] = record.__dict__[key]
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap and close it)."""

    @property
    def stream(self):  # type: ignore[override]
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(level: str, fmt: str = "text") -> None:
    """Root logging for every entry point: text or JSON lines, UTC times, secrets redacted.
    Idempotent; handlers others installed (a test runner's capture) are left in place."""
    import time

    logging.Formatter.converter = time.gmtime
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StderrHandler)] + [handler]
    root.setLevel(level)
    install()
