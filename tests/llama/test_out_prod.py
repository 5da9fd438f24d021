"""ggml's OUT_PROD on the CPU backend, float32 (patch 0003 gives it a tiled kernel: four
rows of the result at a time, two vectors of columns held in registers), against a
double-precision sum over every element: columns that fill the vectors and columns left
over, one to nine result rows (every tile size and the tiles split between threads),
broadcast over the outer dimensions as attention's grouped heads use it, the second
operand contiguous or transposed (as ggml's backward of a matrix product passes it), one
to three threads.

ULPT_LLAMA_OUT_PROD names the driver tests/llama/ggml_out_prod (the Makefile sets it)."""
import itertools
import os
import subprocess

import pytest

DRIVER = os.environ.get("ULPT_LLAMA_OUT_PROD")

pytestmark = pytest.mark.skipif(not DRIVER, reason="run through `make check-llama`")


def tol(m):
    """A float32 sum of m products, one rounding each: m units of float32's epsilon,
    relative to max(1, |sum|) (the driver's measure)."""
    return m * 1.2e-7


def out_prod(n, m, p, q1=1, qq=1, r1=1, rr=1, transposed=1, threads=2):
    r = subprocess.run([DRIVER] + [str(x) for x in (n, m, p, q1, qq, r1, rr, transposed, threads)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return float(r.stdout)


@pytest.mark.parametrize("n", [1, 7, 8, 16, 31, 32, 33, 64, 100, 256])
@pytest.mark.parametrize("p", [1, 2, 3, 4, 5, 9])
def test_columns_and_rows(n, p):
    for transposed, threads in itertools.product((0, 1), (1, 2, 3)):
        err = out_prod(n, 23, p, transposed=transposed, threads=threads)
        assert err <= tol(23), (n, p, transposed, threads, err)


@pytest.mark.parametrize("q1,qq,r1,rr", [(1, 4, 1, 1), (2, 4, 1, 2), (1, 2, 1, 3), (2, 2, 2, 2)])
def test_broadcast_over_outer_dimensions(q1, qq, r1, rr):
    for p, threads in itertools.product((1, 3, 6), (1, 2, 3)):
        err = out_prod(40, 17, p, q1, qq, r1, rr, 1, threads)
        assert err <= tol(17), (p, q1, qq, r1, rr, threads, err)


def test_a_longer_sum():
    # the shape of a backward through tinylm-llama's feed-forward: width 256, 688 inner
    assert out_prod(256, 688, 37, threads=2) <= tol(688)
