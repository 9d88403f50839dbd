"""The full-resolution step of the enhancement on CPUs, compiled by numba: the curve map's rows interpolated
and the 8-step curve applied, in one pass over the pixels (enhance.apply_curve_cpu calls it).

numba is imported on first use. Its import and the first load of the cached kernel take about 0.4 CPU-seconds,
mostly numba's own modules (0.3 more if numba imported SciPy's BLAS, which it checks for: see scipy_refused).
Enhancer does that load when it is made on a CPU (warm_up_curve_kernel), after PyTorch's import and before any
image. Not beside PyTorch's import in a thread: both hold the GIL most of the time, and side by side they took
0.1 s longer than one after the other.
"""

import contextlib
import importlib.abc
import sys
import threading

import numpy as np

# model.py's number of curve steps comes from here: in the kernel it must be a compile-time constant, so
# that numba unrolls the steps and vectorises the loop over a row.
NUM_CURVE_STEPS = 8


def curve_rows(src, low, first, second, weight, scale, out):
    """The whole full-resolution step in one pass, for CPUs: for each row i, the curve-map row interpolated
    between low[first[i]] and low[second[i]] (align_corners=True, as row_upsampler), then the 8-step curve
    on src[i] / scale, times scale, + 0.5 (truncating then rounds half up), into out[i]. Every value stays
    in registers: 5x faster than the same arithmetic as PyTorch ops over bands (which read and write the
    band 20 times). src (H, N) integers; low (h, N) float32; out (H, N) integers, or float32 to keep y.
    float32 throughout, as the PyTorch path; no division (x * (1 / scale)) so that the loop vectorises.
    Compiled by numba: call it through curve_rows_kernel()."""
    one, half = np.float32(1.0), np.float32(0.5)
    scale = np.float32(scale)
    inverse = one / scale
    for i in range(src.shape[0]):
        b = weight[i]
        a = one - b
        low0, low1, row, out_row = low[first[i]], low[second[i]], src[i], out[i]
        for j in range(row.shape[0]):
            r = a * low0[j] + b * low1[j]
            one_minus_r = one - r
            x = np.float32(row[j]) * inverse
            for _ in range(NUM_CURVE_STEPS - 1):
                x = x * (one_minus_r + r * x)
            out_row[j] = half + scale * (x * (one_minus_r + r * x))


_kernel_lock = threading.Lock()
_compiled_kernel = None


def curve_rows_kernel():
    """curve_rows compiled by numba (machine code cached beside this file after the first run; numba
    imported here, on first use)."""
    global _compiled_kernel
    with _kernel_lock:
        if _compiled_kernel is None:
            import numba

            _compiled_kernel = numba.njit(nogil=True, cache=True, error_model="numpy")(curve_rows)
        return _compiled_kernel


class SciPyRefused(importlib.abc.MetaPathFinder):
    """An import hook that refuses SciPy to one thread (the one that creates it), and to no other."""

    def __init__(self):
        self.thread = threading.get_ident()

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "scipy" and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"{name}: not imported while the curve kernel loads", name=name)
        return None  # the other finders look for it as usual


@contextlib.contextmanager
def scipy_refused():
    """SciPy cannot be imported by this thread inside the block. numba's first load of any compiled function
    loads all its implementations, among them np.dot's, and that imports SciPy's BLAS (0.3 CPU-seconds,
    half the load) just to see whether it is there; without SciPy numba marks BLAS missing and loads the rest.
    The kernel calls no BLAS, and a numba function compiled later that does imports SciPy then."""
    finder = SciPyRefused()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def warm_up_curve_kernel():
    """Load (or compile) the kernel for the common case, 8-bit colour in and out, on a 1x1 image (without
    SciPy: see scipy_refused)."""
    pixel = np.zeros((1, 3), np.uint8)
    with scipy_refused():
        curve_rows_kernel()(
            pixel,
            np.zeros((1, 3), np.float32),
            np.zeros(1, np.int64),
            np.zeros(1, np.int64),
            np.zeros(1, np.float32),
            255.0,
            pixel,
        )
