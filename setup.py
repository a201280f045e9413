"""Build the ``rbe._core`` extension: one Cython module over the C headers in rbe/include/rbe.

OpenMP is used where the compiler supports it (probed with a test program); elsewhere the
extension is built serially and ``rbe.kernel_info()["openmp"]`` reports False.
"""
import glob
import os
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
    """
)


def openmp_flags(compiler):
    """Return (compile_args, link_args) enabling OpenMP, or None if the compiler lacks it."""
    if os.environ.get("RBE_DISABLE_OPENMP"):
        return None
    if compiler.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"]),
                      (["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        for cflags, lflags in candidates:
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=lflags)
            except Exception:
                continue
            return cflags, lflags
    return None


class BuildExt(build_ext):
    def build_extensions(self):
        flags = openmp_flags(self.compiler)
        if self.compiler.compiler_type == "msvc":
            opt = ["/O2", "/fp:precise", "/std:c11"]
        else:
            # -fno-math-errno lets sqrt inline and -fno-trapping-math lets the scalar kernels'
            # branch-free loops vectorise; neither changes a value. No -ffast-math: the kernels
            # rely on IEEE semantics, and -std=c99 keeps a*b+c unfused outside intrinsics.
            opt = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-std=c99"]
        for ext in self.extensions:
            ext.extra_compile_args = opt + (flags[0] if flags else [])
            ext.extra_link_args = flags[1] if flags else []
        if flags is None:
            print("rbe: OpenMP not available, building the serial kernels", file=sys.stderr)
        super().build_extensions()


extensions = [
    Extension(
        "rbe._core",
        ["rbe/_core.pyx"],
        include_dirs=["rbe/include", np.get_include()],
        # rebuild when a header changes (the .pyx and .pxi files are tracked by cythonize)
        depends=sorted(glob.glob("rbe/include/rbe/*.h")),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
