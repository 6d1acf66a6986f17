"""Regenerates the Python code (+ .pyi stubs) for every .proto under protos/.

Sources live at protos/<service>/v1/*.proto; they are compiled as
faultlab/protos/<service>/v1/*.proto so the generated modules import each other
as `faultlab.protos.<service>.v1`. `--check` fails when the committed code is stale.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out: Path) -> list[Path]:
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        staged = src / "faultlab" / "protos"
        sources = sorted(PROTOS.rglob("*.proto"))
        for proto in sources:
            target = staged / proto.relative_to(PROTOS)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(proto, target)
        gen = Path(tmp) / "gen"
        gen.mkdir()
        include = Path(protoc.__file__).parent / "_proto"
        files = [str(p.relative_to(src)) for p in sorted(staged.rglob("*.proto"))]
        args = ["protoc", f"-I{src}", f"-I{include}", f"--python_out={gen}", f"--grpc_python_out={gen}",
                f"--mypy_out={gen}", f"--mypy_grpc_out={gen}", *files]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        written = []
        for path in sorted((gen / "faultlab" / "protos").rglob("*")):
            if path.is_file() and path.name.endswith(SUFFIXES):
                dest = out / path.relative_to(gen / "faultlab" / "protos")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, dest)
                written.append(dest)
        return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code differs")
    args = parser.parse_args()
    if not args.check:
        for path in generate(PROTOS):
            print("wrote", path.relative_to(ROOT))
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [p.relative_to(tmp) for p in fresh if not (PROTOS / p.relative_to(tmp)).exists()
                 or not filecmp.cmp(p, PROTOS / p.relative_to(tmp), shallow=False)]
        committed = {p.relative_to(PROTOS) for p in PROTOS.rglob("*") if p.name.endswith(SUFFIXES)}
        extra = committed - {p.relative_to(tmp) for p in fresh}
        if stale or extra:
            sys.exit(f"generated protos are stale: {sorted(map(str, stale + list(extra)))}; run `make protos`")
    print("generated protos are fresh")


if __name__ == "__main__":
    main()
