"""Structured JSON logs, with one redaction step every line passes through.

Whatever a caller puts in a message or an `extra` field, anything shaped like a bearer
token, a JWT, an OpenAI key or a Vault token is masked before it is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_SECRET_PATTERNS = (
    re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),  # JWT / JWS
    re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"),  # OpenAI keys
    re.compile(r"\brk_[A-Za-z0-9_-]{6,}"),  # relay-issued client keys
    re.compile(r"\b(?:hvs|hvb|hvr|s)\.[A-Za-z0-9_-]{16,}"),  # Vault / OpenBao tokens
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
)
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + "[REDACTED]", text)
        else:
            text = pattern.sub("[REDACTED]", text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # hvac/urllib3 debug lines can carry request headers: keep them quiet.
    for noisy in ("urllib3", "hvac", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(level)))
