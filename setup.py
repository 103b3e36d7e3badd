"""Builds fastrnn and its C++ CPU extension (set FASTRNN_SKIP_BUILD=1 to install the Python parts only;
the extension is then compiled on first use)."""

import os
import sys
from glob import glob

from setuptools import setup

# at::parallel_for is inlined into the extension: without OpenMP it runs serially. On Linux the
# libgomp.so.1 that torch already loaded serves it.
OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []
ext_modules = []
cmdclass = {}
if os.environ.get("FASTRNN_SKIP_BUILD", "0") != "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    ext_modules.append(
        CppExtension(
            "fastrnn._C",
            sorted(glob("csrc/*.cpp")),
            extra_compile_args=["-O3", "-std=c++17"] + OPENMP,
            extra_link_args=OPENMP,
        )
    )
    cmdclass["build_ext"] = BuildExtension

setup(
    packages=["fastrnn", "fastrnn.kernels", "fastrnn.csrc"],
    package_dir={"fastrnn": "fastrnn", "fastrnn.kernels": "kernels", "fastrnn.csrc": "csrc"},
    package_data={"fastrnn.csrc": ["*.cpp", "*.h"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
