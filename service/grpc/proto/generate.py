"""Regenerate the Python modules of ``grpc_predict_v2.proto``; run it after changing the .proto file.

    python -m service.grpc.proto.generate           # rewrite grpc_predict_v2_pb2{.py,.pyi,_grpc.py}
    python -m service.grpc.proto.generate --check   # exit 1 when they are not current (a unit test runs this)

It needs grpcio-tools, at the version the test extra pins: its protoc and plugin write their versions into the
modules, so a different version gives different (and for the runtime check, differently constrained) output.

One line of protoc's output is rewritten: the message classes are built in a descriptor pool of their own instead
of protobuf's default pool. Another library's copy of the same protocol (tritonclient's ``inference`` package, say,
in a test process or a pipeline) defines the same symbols, and two of them cannot share one pool.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO = Path(__file__).resolve().with_name("grpc_predict_v2.proto")
REPO_ROOT = PROTO.parents[3]
OUTPUTS = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")

_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_OWN_POOL = (
    "# Rewritten by service/grpc/proto/generate.py: a descriptor pool of this module's own, so that another copy\n"
    "# of the `inference` protocol (tritonclient's) can live in the same process.\n"
    "_POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = _POOL.AddSerializedFile("
)


def generate() -> dict[str, str]:
    """The modules protoc makes of the .proto file (with the pool rewritten), by file name."""
    from grpc_tools import protoc

    relative = PROTO.relative_to(REPO_ROOT).as_posix()
    with tempfile.TemporaryDirectory() as out:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{REPO_ROOT}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(REPO_ROOT / relative),
            ]
        )
        if status != 0:
            raise SystemExit(f"protoc failed on {relative} (exit status {status})")
        folder = Path(out) / PROTO.parent.relative_to(REPO_ROOT)
        modules = {name: (folder / name).read_text() for name in OUTPUTS}
    messages = modules["grpc_predict_v2_pb2.py"]
    if messages.count(_DEFAULT_POOL) != 1:
        raise SystemExit("protoc's output no longer has the one line this script rewrites; update generate.py")
    modules["grpc_predict_v2_pb2.py"] = messages.replace(_DEFAULT_POOL, _OWN_POOL)
    return modules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed modules are current")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = PROTO.with_name(name)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print(f"not current: {', '.join(stale)}; run python -m service.grpc.proto.generate", file=sys.stderr)
        return 1
    print("regenerated " + ", ".join(stale) if stale else "the generated modules are current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
