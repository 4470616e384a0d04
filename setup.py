"""Build of the compiled kernel; everything else is in setup.cfg."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "featcodec._kernel._coder",
    sources=["featcodec/_kernel/module.c", "featcodec/_kernel/lwcoder.c"],
    depends=["featcodec/_kernel/lwcoder.h", "featcodec/_kernel/model.h", "featcodec/_kernel/rangecoder.h",
             "featcodec/_kernel/cdf.h"],
    extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-unused-function"],
)])
