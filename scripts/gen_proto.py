"""Generate the Python stubs for proto/gongji/v1 into <out>/gongji/v1, or check they are current.

The stubs are committed so that the package installs without grpcio-tools; `--check` regenerates into a
temporary directory and fails when anything differs, which is how CI catches stale stubs.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE = Path("gongji") / "v1"


def generate(out_root: Path) -> Path:
    target = out_root / PACKAGE
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / PACKAGE).glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (target / "__init__.py").write_text('"""Generated from proto/gongji/v1 by scripts/gen_proto.py. Do not edit."""\n')
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="source root, e.g. src")
    parser.add_argument("--check", action="store_true", help="fail if the stubs in <out> are stale")
    opts = parser.parse_args()
    if not opts.check:
        generate(opts.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = opts.out / PACKAGE
        cmp = filecmp.dircmp(fresh, committed, ignore=["__pycache__"])
        stale = cmp.left_only + cmp.right_only + cmp.diff_files
        if stale or cmp.funny_files:
            print(f"stale generated stubs in {committed}: {sorted(stale)}; run `make proto`", file=sys.stderr)
            return 1
    print("generated stubs are current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
