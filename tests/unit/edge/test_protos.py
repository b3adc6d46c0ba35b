"""authz/api/ is what protos/ compiles to (scripts/gen_protos.py --check)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]


def _gen_protos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts/gen_protos.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_protos", module)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current() -> None:
    assert _gen_protos().differences() == []


def test_a_changed_proto_is_reported_stale(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _gen_protos()
    protos = tmp_path / "protos"
    shutil.copytree(REPO / "protos", protos)
    admin = protos / "openai_relay/admin/v1/admin.proto"
    admin.write_text(admin.read_text().replace(
        "message InvalidateCacheResponse {}",
        "message InvalidateCacheResponse { string invalidated = 1; }"))
    monkeypatch.setattr(gen, "PROTOS", protos)
    assert gen.differences() == [
        "stale: authz/api/openai_relay/admin/v1/admin_pb2.py",
        "stale: authz/api/openai_relay/admin/v1/admin_pb2.pyi",
    ]
