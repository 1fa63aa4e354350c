"""weft._C on a machine without a GPU (CI): the extension loads, weft's errors are Python
exceptions of the right kind, and joining a world with no GPU fails with a weft.Error that says
why instead of crashing the interpreter."""

import os
import re
import sys

import weft
from weft import _C


def main() -> int:
    assert issubclass(weft.InvalidArgument, weft.Error)
    assert issubclass(weft.Timeout, weft.Error)
    assert issubclass(weft.Error, RuntimeError)
    assert weft.Error is _C.Error
    # The version is the sources' (weft/runtime/version.h), and an installed wheel's metadata says
    # the same.
    version_h = os.path.join(os.path.dirname(__file__), "..", "..", "weft", "runtime", "version.h")
    with open(version_h) as f:
        want = re.search(r'kVersion = "([0-9.]+)"', f.read()).group(1)
    assert weft.__version__ == want, (weft.__version__, want)
    try:
        import importlib.metadata as metadata
        installed = metadata.version("weft")
    except Exception:  # not installed: run from a build tree
        installed = None
    if installed is not None:
        assert installed == want, (installed, want)

    # The World's failure handling is reachable from Python (weft/runtime/world.h).
    for name in ("abort", "synchronize", "barrier", "host_barrier", "has_abort_board"):
        assert hasattr(_C.World, name), name
    # So is each operator's abandon, which the Python layer's own checks call (weft.tensor_parallel
    # _checks_or_abandon).
    for cls, names in ((_C.AgGemm, ("abandon",)), (_C.GemmRs, ("abandon",)), (_C.GemmAr, ("abandon",)),
                       (_C.ExpertParallel, ("abandon_dispatch", "abandon_combine"))):
        for name in names:
            assert hasattr(cls, name), f"{cls.__name__}.{name}"

    # A one-process job (no launcher variables): the world's first CUDA call finds no GPU here.
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                "SLURM_PROCID", "WEFT_RANK"):
        os.environ.pop(var, None)
    try:
        _C.World.create()
    except weft.Error as e:
        message = str(e)
        assert message, "weft.Error without a message"
        print(f"World.create without a GPU: {type(e).__name__}: {message.splitlines()[0]}")
    else:
        print("World.create succeeded: this machine has a GPU; nothing more to check here")

    # The torch layer loads lazily: attribute access without torch names the missing module.
    try:
        import torch  # noqa: F401
    except ImportError:
        try:
            weft.GemmRS
        except ImportError as e:
            assert "torch" in str(e), e
        else:
            raise AssertionError("weft.GemmRS loaded without torch")
    print("python_cpu_test: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
