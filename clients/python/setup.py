"""Generates the gRPC stubs from the repository's `proto/` while the package is built.

The stubs are never committed: `build_py` runs grpcio-tools' protoc over `../../proto` (or
`$COMMERCE_MESH_PROTO_DIR`) into the package being built, under `commerce_mesh/_proto`. protoc
writes absolute imports (`from commerce.quota.v1 import ...`, `from google.api import ...`); they
are rewritten to point inside `commerce_mesh._proto`, so the stubs cannot clash with another
package that ships `google.api` (googleapis-common-protos).
"""

import os
import re
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PACKAGE = "commerce_mesh._proto"
# Every top-level proto package our contracts define or import, except google.protobuf (the
# protobuf runtime ships those).
IMPORT = re.compile(r"^from (commerce|google\.api)(\.[\w.]+)? import ", re.MULTILINE)


def proto_dir() -> Path:
    configured = os.environ.get("COMMERCE_MESH_PROTO_DIR")
    root = Path(configured) if configured else HERE.parent.parent / "proto"
    if not (root / "commerce").is_dir():
        raise SystemExit(
            f"commerce-mesh: no .proto contracts at {root}; build from the repository checkout "
            "or set COMMERCE_MESH_PROTO_DIR"
        )
    return root


def generate(out: Path) -> None:
    # Imported here: setup.py is also loaded for metadata, where grpcio-tools is not needed.
    import grpc_tools
    from grpc_tools import protoc

    root = proto_dir()
    protos = sorted(str(p.relative_to(root)) for p in root.rglob("*.proto"))
    target = out / Path(*PACKAGE.split("."))
    target.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--python_out={target}",
            f"--pyi_out={target}",
            f"--grpc_python_out={target}",
            *protos,
        ]
    )
    if status != 0:
        raise SystemExit(f"commerce-mesh: protoc failed ({status})")
    for generated in target.rglob("*.py*"):
        if generated.suffix in (".py", ".pyi"):
            text = generated.read_text()
            generated.write_text(IMPORT.sub(rf"from {PACKAGE}.\1\2 import ", text))
    # Regular packages, so setuptools and type checkers see them.
    for directory in [target, *(d for d in target.rglob("*") if d.is_dir())]:
        (directory / "__init__.py").touch()


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        # An editable install imports from src/, so the stubs go there (gitignored).
        generate(HERE / "src" if self.editable_mode else Path(self.build_lib))
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
