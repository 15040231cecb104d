#!/bin/sh
# Trim the image's virtualenv to what the appliance runs: the Dockerfile's deps stage calls it
# once everything is installed and checked.
#
#   packaging/slim-venv.sh VENV
#
# What goes, and why it is dead weight at run time (README "Image size" has the measurements;
# pip and setuptools the Dockerfile removes from the copy it ships, after the project is built):
# - the test suites of pandas, numpy and pyarrow, C/C++ headers and Cython sources in wheels;
# - pyarrow's Flight and S3 libraries: `edge` and `ops-sync` never import pyarrow.flight or an
#   S3 filesystem (pyarrow.fs imports without them); pyarrow.parquet, pyarrow.dataset and
#   pyarrow.compute stay (libarrow_python links them);
# - the unversioned copies of libarrow_python (links for building against pyarrow, not loaded);
# - symbol tables of shared libraries (`strip --strip-unneeded`: what the dynamic loader needs
#   stays);
# - onnxruntime's C API library and its offline conversion tools (the Python API does not load
#   them).
set -eu

venv="${1:?usage: slim-venv.sh VENV}"
site="$(echo "$venv"/lib/python3*/site-packages)"
[ -d "$site" ] || { echo "slim-venv.sh: no site-packages under $venv" >&2; exit 1; }

# Test suites: only where they were measured and checked (pandas 46 MB, numpy 13, pyarrow 7).
# Not a rule for every package: `tensorflow.test` is a module TensorFlow imports.
for package in pandas numpy pyarrow; do
    [ -d "$site/$package" ] || continue
    find "$site/$package" -depth -type d -name tests -exec rm -rf {} +
done
find "$site" -depth -type d -name include -path "*/pyarrow/include" -exec rm -rf {} +
find "$site" -depth -type d -name include -path "*/numpy/_core/include" -exec rm -rf {} +
find "$site" -type f \( -name "*.pyx" -o -name "*.pxd" -o -name "*.pxi" -o -name "*.h" \
    -o -name "*.hpp" -o -name "*.cc" -o -name "*.cpp" -o -name "*.c" \) -not -path "*/torch/*" -delete

pyarrow="$site/pyarrow"
if [ -d "$pyarrow" ]; then
    rm -f "$pyarrow"/libarrow_flight.so* "$pyarrow"/libarrow_python_flight.so* \
        "$pyarrow"/_flight.*.so "$pyarrow"/libarrow_s3.so* "$pyarrow"/_s3fs.*.so
    for library in "$pyarrow"/libarrow_python.so "$pyarrow"/libarrow_python.so.*.*.*; do
        [ -f "$library" ] && [ ! -L "$library" ] || continue
        soname="$(ls "$pyarrow"/libarrow_python.so.[0-9]* | grep -E '\.so\.[0-9]+$' | head -n1)"
        [ -n "$soname" ] && [ "$library" != "$soname" ] || continue
        rm -f "$library" && ln -s "$(basename "$soname")" "$library"
    done
fi

onnxruntime="$site/onnxruntime"
if [ -d "$onnxruntime" ]; then
    # The Python API is onnxruntime_pybind11_state (ONNX Runtime linked in); libonnxruntime.so is
    # the C API for programs linking against it. tools, quantization and transformers are
    # offline model-conversion scripts.
    rm -f "$onnxruntime"/capi/libonnxruntime.so.*
    rm -rf "$onnxruntime"/tools "$onnxruntime"/quantization "$onnxruntime"/transformers
fi

# Not the libraries auditwheel vendored into <package>.libs: patchelf rewrote their headers, and
# strip makes them unloadable ("ELF load command address/offset not page-aligned").
# Nor torch's (the frameworks variant's; not built and checked stripped here).
find "$site" -type f -name "*.so*" -not -path "*.libs/*" -not -path "*/torch/*" \
    -exec strip --strip-unneeded {} +
find "$site" -type d -name __pycache__ -empty -delete
