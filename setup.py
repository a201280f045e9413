"""Build the C kernels and the Cython extensions over them.

The C sources in rbe/src (declared in rbe/include/rbe) are compiled once into a static library,
``rbe_kernels``, that every extension links. OpenMP is used where the compiler supports it
(probed with a test program; RBE_DISABLE_OPENMP=1 turns it off); elsewhere the extensions are
built serially and ``rbe.kernel_info()["openmp"]`` reports False.
"""
import glob
import os
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_clib import build_clib
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


_FLAGS = {}


def build_flags(compiler):
    """(compile_args, link_args) for the kernels and extensions, probed once per compiler."""
    if compiler.compiler_type not in _FLAGS:
        flags = openmp_flags(compiler)
        if compiler.compiler_type == "msvc":
            opt, link = ["/O2", "/fp:precise", "/std:c11"], []     # MSVC drops unused code
        else:
            # -fno-math-errno lets sqrt inline and -fno-trapping-math lets the scalar kernels'
            # branch-free loops vectorise; neither changes a value. No -ffast-math: the kernels
            # rely on IEEE semantics, and -std=c99 keeps a*b+c unfused outside intrinsics.
            opt = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-std=c99"]
            # Each extension keeps only the kernels it calls: the library's functions are not
            # exported, and the linker drops the sections nothing references.
            opt += ["-fvisibility=hidden", "-ffunction-sections", "-fdata-sections"]
            link = ["-Wl,-dead_strip" if sys.platform == "darwin" else "-Wl,--gc-sections"]
        if flags is None:
            print("rbe: OpenMP not available, building the serial kernels", file=sys.stderr)
        _FLAGS[compiler.compiler_type] = (opt + (flags[0] if flags else []),
                                          link + (flags[1] if flags else []))
    return _FLAGS[compiler.compiler_type]


class BuildClib(build_clib):
    def build_libraries(self, libraries):
        for _, info in libraries:
            info["cflags"] = build_flags(self.compiler)[0]
        super().build_libraries(libraries)


class BuildExt(build_ext):
    def run(self):
        self.run_command("build_clib")      # `build` runs it first; `build_ext` alone does not
        super().run()

    def build_extensions(self):
        compile_args, link_args = build_flags(self.compiler)
        for ext in self.extensions:
            ext.extra_compile_args = compile_args
            ext.extra_link_args = link_args
        # setuptools links every C library into every extension; each extension names its own
        self.compiler.set_libraries([])
        super().build_extensions()


KERNEL_HEADERS = sorted(glob.glob("rbe/include/rbe/*.h") + glob.glob("rbe/src/*.h"))
REFERENCE_SOURCES = ["rbe/src/reference.c"]
KERNEL_SOURCES = sorted(set(glob.glob("rbe/src/*.c")) - set(REFERENCE_SOURCES))
# The production kernels, and the original algorithm (the oracle of rbe.reference) apart.
C_LIBRARIES = {
    "rbe_kernels": {"sources": KERNEL_SOURCES, "include_dirs": ["rbe/include"],
                    "depends": KERNEL_HEADERS},
    "rbe_reference": {"sources": REFERENCE_SOURCES, "include_dirs": ["rbe/include"],
                      "depends": ["rbe/include/rbe/reference.h"]},
}


def extension(name, library):
    """rbe.<name> from rbe/<name>.pyx, linked with one of C_LIBRARIES."""
    return Extension(
        f"rbe.{name}",
        [f"rbe/{name}.pyx"],
        include_dirs=["rbe/include", np.get_include()],
        libraries=[library],
        # relink when the library changes (.pyx and .pxd files are tracked by cythonize)
        depends=C_LIBRARIES[library]["depends"] + C_LIBRARIES[library]["sources"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


extensions = [
    extension("_core", "rbe_kernels"),          # seed-block weights and the thread setting
    extension("_fused", "rbe_kernels"),         # the fused seed-block layer
    extension("_hybrid", "rbe_kernels"),        # sparse transform-domain products
    extension("_code", "rbe_kernels"),          # trellis-coded blocks: encoder and products
    extension("_reference", "rbe_reference"),   # the original algorithm
]

setup(
    libraries=list(C_LIBRARIES.items()),
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "autotestdict": False,      # no __test__ dict of docstring tests in the modules
        },
    ),
    cmdclass={"build_clib": BuildClib, "build_ext": BuildExt},
)
