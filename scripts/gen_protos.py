"""Compile the project's own protos (protos/) into Python under authz/api/.

    python scripts/gen_protos.py           regenerate authz/api/ in place
    python scripts/gen_protos.py --check   exit 1 if authz/api/ is not what protos/ gives

grpcio-tools' protoc writes the messages (`_pb2.py`) and the service (`_pb2_grpc.py`);
mypy-protobuf writes their type stubs (`.pyi`), so mypy checks the code that uses them.
protos/ is mapped onto the import path `authz/api/`, so a file protos/X/Y.proto becomes
the module authz.api.X.Y_pb2 and the generated imports name it so. The output is
committed (an install needs no protoc); tests/unit/edge/test_protos.py runs --check.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTOS = REPO / "protos"
PACKAGE_ROOT = "authz/api"
OUTPUT = REPO / PACKAGE_ROOT
_GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    """The mypy-protobuf plugin installed beside this Python (the venv's bin)."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            raise SystemExit(f"gen_protos: {name} not found: pip install -e '.[test]'")
        return found
    return str(path)


def generate(into: Path) -> list[Path]:
    """Compile every protos/**/*.proto into `into` (the stand-in for the repo root);
    returns the files written, relative to it."""
    from grpc_tools import protoc  # a test dependency: only needed to regenerate

    sources = sorted(PROTOS.rglob("*.proto"))
    if not sources:
        raise SystemExit("gen_protos: no .proto under protos/")
    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
    args = [
        "protoc",
        f"-I{PACKAGE_ROOT}={PROTOS}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={into}",
        f"--grpc_python_out={into}",
        f"--mypy_out=quiet:{into}",
        f"--mypy_grpc_out=quiet:{into}",
        *(f"{PACKAGE_ROOT}/{source.relative_to(PROTOS).as_posix()}" for source in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("gen_protos: protoc failed")
    # What protoc wrote (not whatever else is there, such as __pycache__ folders).
    written = sorted(_generated(into))
    # Every folder on the way is a package.
    for folder in {p.parent for p in written}:
        package = folder
        while package != Path(PACKAGE_ROOT).parent:
            init = into / package / "__init__.py"
            if not init.exists():
                init.write_text("")
            package = package.parent
    return written


def _generated(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in (root / PACKAGE_ROOT).rglob("*")
            if p.is_file() and p.name.endswith(_GENERATED_SUFFIXES)}


def differences() -> list[str]:
    """What differs between authz/api/ and a fresh compile of protos/ (empty: current)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = _generated(fresh), _generated(REPO)
        found = [f"missing: {p}" for p in sorted(want - have)]
        found += [f"not generated from protos/: {p}" for p in sorted(have - want)]
        found += [f"stale: {p}" for p in sorted(want & have)
                  if not filecmp.cmp(fresh / p, REPO / p, shallow=False)]
        return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare instead of writing; exit 1 when authz/api/ is stale")
    args = parser.parse_args()
    if args.check:
        found = differences()
        for line in found:
            print(line, file=sys.stderr)
        return 1 if found else 0
    for stale in _generated(REPO):
        (REPO / stale).unlink()
    for path in generate(REPO):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
