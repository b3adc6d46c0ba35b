import json
import logging

from authz.edge.logs import JsonFormatter, redact

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLWJ5dGVz"


def test_redaction_masks_every_secret_shape():
    text = (f"token {JWT} key sk-proj-abcdefghijklmnop vault hvs.ABCDEFGHIJKLMNOPQRST "
            "client rk_live_abcdefgh Authorization: Bearer opaque-credential-123")
    masked = redact(text)
    for secret in (JWT, "sk-proj-abcdefghijklmnop", "hvs.ABCDEFGHIJKLMNOPQRST",
                   "rk_live_abcdefgh", "opaque-credential-123"):
        assert secret not in masked
    assert masked.count("[REDACTED]") == 5


def test_json_lines_redact_message_and_extra_fields():
    record = logging.LogRecord("authz", logging.WARNING, __file__, 1,
                               "failed for %s", (JWT,), None)
    record.api_key = "sk-abcdefghijklmnopqrstuvwxyz"
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert JWT not in line
    assert "sk-abcdefghijklmnopqrstuvwxyz" not in line
    assert entry["api_key"] == "[REDACTED]"
