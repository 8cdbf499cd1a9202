"""Builds tracker-client, generating its gRPC stubs from proto/tracker/v1/tracker.proto
(a link to the repository's proto/) with grpcio-tools as the wheel is built, so that the
stubs always match the .proto and are never committed.

The stubs go into tracker_client/_gen/ inside the build: `from tracker.v1 import tracker_pb2`
in the generated code becomes a relative import, so that the package does not claim the
top-level name `tracker`. The descriptor keeps the file name tracker/v1/tracker.proto, as
the daemon's reflection service reports it.
"""

import os
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "proto")
PROTO = "tracker/v1/tracker.proto"
GENERATED = ["tracker_pb2.py", "tracker_pb2.pyi", "tracker_pb2_grpc.py"]


def generate_stubs(out_dir):
    import grpc_tools
    from grpc_tools import protoc

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{well_known}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                os.path.join(PROTO_ROOT, PROTO),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed ({rc}) on {PROTO_ROOT}/{PROTO}")
        for name in GENERATED:
            with open(os.path.join(tmp, "tracker", "v1", name)) as f:
                text = f.read()
            text = text.replace("from tracker.v1 import tracker_pb2", "from . import tracker_pb2")
            with open(os.path.join(out_dir, name), "w") as f:
                f.write(text)
    with open(os.path.join(out_dir, "__init__.py"), "w") as f:
        f.write(f'"""Generated from {PROTO} by grpcio-tools when the package was built."""\n')


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        generate_stubs(os.path.join(self.build_lib, "tracker_client", "_gen"))


setup(cmdclass={"build_py": BuildPyWithStubs})
