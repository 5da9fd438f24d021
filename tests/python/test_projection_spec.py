"""Regenerate the libulpt projection from docs/PROJECTION.md alone (pure Python).

Everything here is written from the specification document; nothing is taken from
the C sources.  The tests check the document's own known answers, then compare a
pure-Python regeneration with the compiled library through ctypes.
"""
import ctypes
import math
import os
import struct

import pytest

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF

KIND_XAVIER_UNIFORM = 0
KIND_KAIMING_UNIFORM = 1
KIND_GAUSSIAN = 2
KIND_RADEMACHER = 3

# ---------------------------------------------------------------------------
# float32 helpers


def f32(x):
    """Round a Python float (float64) to float32, round-to-nearest-even."""
    return struct.unpack('<f', struct.pack('<f', x))[0]


def f32_bits(x):
    return struct.unpack('<I', struct.pack('<f', x))[0]


def f32_ordered(x):
    """Map a float32 to an integer whose order matches the float order (for ulp)."""
    b = f32_bits(x)
    return (0x80000000 - (b & 0x7FFFFFFF)) if b & 0x80000000 else (0x80000000 + b)


def ulp_distance(a, b):
    return abs(f32_ordered(a) - f32_ordered(b))


# ---------------------------------------------------------------------------
# Section 1: Philox4x32-10

M0 = 0xD2511F53
M1 = 0xCD9E8D57
W0 = 0x9E3779B9
W1 = 0xBB67AE85


def philox4x32_10(counter, key):
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0 = M0 * c0
        p1 = M1 * c2
        c0, c1, c2, c3 = (((p1 >> 32) ^ c1 ^ k0) & MASK32, p1 & MASK32,
                          ((p0 >> 32) ^ c3 ^ k1) & MASK32, p0 & MASK32)
        k0 = (k0 + W0) & MASK32
        k1 = (k1 + W1) & MASK32
    return (c0, c1, c2, c3)


# ---------------------------------------------------------------------------
# Section 2: streams


class Stream:
    """Words of the stream named by (seed, t2, t3)."""

    def __init__(self, seed, t2, t3):
        seed &= MASK64
        self.key = (seed & MASK32, seed >> 32)
        self.t2 = t2 & MASK32
        self.t3 = t3 & MASK32

    def block(self, q):
        return philox4x32_10((q & MASK32, (q >> 32) & MASK32, self.t2, self.t3), self.key)

    def words(self, n):
        out = []
        q = 0
        while len(out) < n:
            out.extend(self.block(q))
            q += 1
        return out[:n]

    def word(self, w):
        return self.block(w // 4)[w % 4]


def projection_stream(seed, rank, dim):
    return Stream(seed, rank, dim)


def init_z_stream(init_seed, rank):
    return Stream(init_seed, rank, 0)


# ---------------------------------------------------------------------------
# Section 3: kinds

TWO_PI = 6.283185307179586
TWO_M24 = 2.0 ** -24


def uniform_base(x):
    # u = float32(x >> 8) * 2^-24, exact; 2u - 1 exact in float32.
    u = f32(float(x >> 8)) * TWO_M24
    return 2.0 * u - 1.0


def scale_xavier(rank, dim):
    return f32(math.sqrt(6.0 / (rank + dim)))


def scale_inv_sqrt_rank_f32(rank):
    return f32(1.0 / math.sqrt(rank))


def normal_draws(words):
    """Box-Muller in float64 on the stream words, 4 draws per block."""
    assert len(words) % 4 == 0
    out = []
    for q in range(0, len(words), 4):
        for (x0, x1) in ((words[q], words[q + 1]), (words[q + 2], words[q + 3])):
            u1 = (float(x0 >> 8) + 1.0) * TWO_M24
            u2 = float(x1 >> 8) * TWO_M24
            rho = math.sqrt(-2.0 * math.log(u1))
            out.append(rho * math.cos(TWO_PI * u2))
            out.append(rho * math.sin(TWO_PI * u2))
    return out


def projection(seed, kind, rank, dim):
    """The rank x dim projection, row-major, as a list of Python floats (float32 values)."""
    n = rank * dim
    st = projection_stream(seed, rank, dim)
    nwords = (n + 3) // 4 * 4
    words = st.words(nwords)
    if kind == KIND_XAVIER_UNIFORM:
        a = scale_xavier(rank, dim)
        return [f32(uniform_base(x) * a) for x in words[:n]]
    if kind == KIND_KAIMING_UNIFORM:
        a = scale_inv_sqrt_rank_f32(rank)
        return [f32(uniform_base(x) * a) for x in words[:n]]
    if kind == KIND_RADEMACHER:
        a = scale_inv_sqrt_rank_f32(rank)
        return [(-a if (x >> 31) & 1 else a) for x in words[:n]]
    if kind == KIND_GAUSSIAN:
        scale = 1.0 / math.sqrt(rank)
        return [f32(z * scale) for z in normal_draws(words)[:n]]
    raise ValueError(kind)


def initial_z(init_seed, rank, n_tokens, init_std):
    n = n_tokens * rank
    words = init_z_stream(init_seed, rank).words((n + 3) // 4 * 4)
    scale = float(init_std)
    return [f32(z * scale) for z in normal_draws(words)[:n]]


# ---------------------------------------------------------------------------
# Section 4: groups

GOLDEN = 0x9E3779B97F4A7C15


def group_seed(projection_seed, i):
    return (projection_seed + i * GOLDEN) & MASK64


# ---------------------------------------------------------------------------
# Tests: Section 1 known answers

PHILOX_KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT,
                         ids=["zeros", "ones", "pi_digits"])
def test_philox4x32_10_matches_known_answer_vectors(counter, key, expected):
    assert philox4x32_10(counter, key) == expected


def test_stream_word_w_is_lane_w_mod_4_of_block_w_div_4():
    st = Stream(0x0123456789ABCDEF, 3, 7)
    words = st.words(12)
    for w in range(12):
        assert words[w] == st.block(w // 4)[w % 4]
    # block counter carries the seed split as (lo, hi) key and q as (lo, hi) counter
    assert st.block(1) == philox4x32_10((1, 0, 3, 7), (0x89ABCDEF, 0x01234567))


# ---------------------------------------------------------------------------
# Tests: Section 5 known answers

P_KAT = [
    ("xavier_uniform", KIND_XAVIER_UNIFORM, 0x0000000000000000, 2, 8,
     "0.103211403 -0.106706351 -0.0683019534 0.263060868 -0.617932498 0.608003616 "
     "-0.760690331 -0.348780572"),
    ("xavier_uniform", KIND_XAVIER_UNIFORM, 0x000000000000002a, 2, 4096,
     "-0.0300244577 -0.0139829908 0.0235981196 -0.0144388722 0.0207396615 "
     "0.00806771405 -0.00985047501 -0.0246411879"),
    ("kaiming_uniform", KIND_KAIMING_UNIFORM, 0x000000000000002a, 2, 4,
     "-0.35200423 0.304275364 0.494487047 -0.365611106 -0.382691354 -0.00233493536 "
     "0.0649061427 0.413901418"),
    ("rademacher", KIND_RADEMACHER, 0x0123456789abcdef, 4, 4,
     "-0.5 0.5 -0.5 -0.5 -0.5 0.5 0.5 0.5"),
    ("gaussian", KIND_GAUSSIAN, 0x0000000000000007, 2, 4,
     "0.619449079 0.692641258 0.00787196495 -0.459549218 -1.32486641 0.325896889 "
     "-0.177850485 -1.08561027"),
    ("gaussian", KIND_GAUSSIAN, 0xffffffffffffffff, 3, 5,
     "0.204641238 0.0160179231 -0.179688737 0.24164705 -0.00780931162 0.0397978052 "
     "0.376344085 0.74544847"),
]


def first_eight(seed, kind, rank, dim):
    n = min(8, rank * dim)
    st = projection_stream(seed, rank, dim)
    words = st.words(8)
    # Only the first 8 elements are needed: compute them without building the matrix.
    if kind == KIND_XAVIER_UNIFORM:
        a = scale_xavier(rank, dim)
        return [f32(uniform_base(x) * a) for x in words[:n]]
    if kind == KIND_KAIMING_UNIFORM:
        a = scale_inv_sqrt_rank_f32(rank)
        return [f32(uniform_base(x) * a) for x in words[:n]]
    if kind == KIND_RADEMACHER:
        a = scale_inv_sqrt_rank_f32(rank)
        return [(-a if x >> 31 else a) for x in words[:n]]
    scale = 1.0 / math.sqrt(rank)
    return [f32(z * scale) for z in normal_draws(words)[:n]]


@pytest.mark.parametrize("name,kind,seed,rank,dim,printed", P_KAT,
                         ids=["%s-%#x-%dx%d" % (r[0], r[2], r[3], r[4]) for r in P_KAT])
def test_projection_first_eight_elements_match_known_answers(name, kind, seed, rank, dim, printed):
    expected = [f32(float(s)) for s in printed.split()]
    got = first_eight(seed, kind, rank, dim)
    assert len(got) == 8
    if rank * dim <= 64:
        # the full-matrix generator agrees with the first-eight shortcut
        assert projection(seed, kind, rank, dim)[:8] == got
    for i, (g, e) in enumerate(zip(got, expected)):
        if kind == KIND_GAUSSIAN:
            assert ulp_distance(g, e) <= 2, (i, g, e)
        else:
            assert f32_bits(g) == f32_bits(e), (i, g, e)
            assert "%.9g" % g == printed.split()[i], (i, g)


def test_initial_z_first_eight_elements_match_known_answers():
    printed = ("-0.214431375 -0.0704231113 0.811836123 0.204263523 0.250748426 "
               "-0.321006864 0.764864564 0.274602562")
    expected = [f32(float(s)) for s in printed.split()]
    got = initial_z(1, 2, 4, 0.5)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert ulp_distance(g, e) <= 2, (i, g, e)


def test_initial_z_of_longer_prompt_starts_with_rows_of_shorter_one():
    assert initial_z(1, 2, 8, 0.5)[:8] == initial_z(1, 2, 4, 0.5)


def test_group_seed_known_answer():
    assert group_seed(5, 0) == 5
    assert group_seed(5, 1) == 11400714819323198490


def test_group_seed_wraps_modulo_2_64():
    s = group_seed(0xFFFFFFFFFFFFFFFF, 3)
    assert s == (0xFFFFFFFFFFFFFFFF + 3 * GOLDEN) % (1 << 64)
    assert 0 <= s < (1 << 64)


# ---------------------------------------------------------------------------
# Tests: comparison with the compiled library


def _library_path():
    env = os.environ.get("ULPT_LIBRARY")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "lib", "libulpt.so.1"))


@pytest.fixture(scope="module")
def lib():
    path = _library_path()
    if not os.path.exists(path):
        pytest.fail("shared library not found: %s (set ULPT_LIBRARY)" % path)
    L = ctypes.CDLL(path)
    L.ulpt_projection_create.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint64,
                                         ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int]
    L.ulpt_projection_create.restype = ctypes.c_int
    L.ulpt_projection_free.argtypes = [ctypes.c_void_p]
    L.ulpt_projection_free.restype = None
    L.ulpt_projection_data.argtypes = [ctypes.c_void_p]
    L.ulpt_projection_data.restype = ctypes.POINTER(ctypes.c_float)
    return L


def library_projection(L, seed, kind, rank, dim):
    handle = ctypes.c_void_p()
    rc = L.ulpt_projection_create(ctypes.byref(handle), seed, rank, dim, kind)
    assert rc == 0, "ulpt_projection_create returned %d" % rc
    try:
        data = L.ulpt_projection_data(handle)
        assert data, "ulpt_projection_data returned NULL"
        n = rank * dim
        raw = ctypes.string_at(data, 4 * n)
        return list(struct.unpack('<%df' % n, raw))
    finally:
        L.ulpt_projection_free(handle)


LIB_CASES = [
    # (seed, kind, rank, dim)
    (0x0000000000000000, KIND_XAVIER_UNIFORM, 2, 8),
    (0x000000000000002A, KIND_XAVIER_UNIFORM, 2, 4096),
    (0x0123456789ABCDEF, KIND_XAVIER_UNIFORM, 7, 33),
    (0xFEDCBA9876543210, KIND_KAIMING_UNIFORM, 1, 13),
    (0x000000000000002A, KIND_KAIMING_UNIFORM, 5, 101),
    (0x0000000100000000, KIND_KAIMING_UNIFORM, 16, 64),
    (0x0123456789ABCDEF, KIND_RADEMACHER, 4, 4),
    (0xDEADBEEFCAFEBABE, KIND_RADEMACHER, 3, 257),
    (0x0000000000000001, KIND_RADEMACHER, 1, 7),
    (0x0000000000000007, KIND_GAUSSIAN, 2, 4),
    (0xFFFFFFFFFFFFFFFF, KIND_GAUSSIAN, 3, 5),
    (0x00000001FFFFFFFF, KIND_GAUSSIAN, 1, 1023),
    (0x9E3779B97F4A7C15, KIND_GAUSSIAN, 6, 99),
    (0x00000000FFFFFFFF, KIND_GAUSSIAN, 2, 4096),
    (0x8000000000000001, KIND_RADEMACHER, 2, 4096),
    (0x0000002A00000000, KIND_KAIMING_UNIFORM, 4, 4095),
    (group_seed(5, 1), KIND_XAVIER_UNIFORM, 8, 129),
]

KIND_NAMES = {0: "xavier", 1: "kaiming", 2: "gaussian", 3: "rademacher"}


@pytest.mark.parametrize("seed,kind,rank,dim", LIB_CASES,
                         ids=["%s-%#x-%dx%d" % (KIND_NAMES[k], s, r, d)
                              for (s, k, r, d) in LIB_CASES])
def test_library_projection_matches_python_regeneration(lib, seed, kind, rank, dim):
    want = projection(seed, kind, rank, dim)
    got = library_projection(lib, seed, kind, rank, dim)
    assert len(got) == len(want) == rank * dim
    if kind == KIND_GAUSSIAN:
        bad = [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if ulp_distance(g, w) > 2]
        assert not bad, "%d elements beyond 2 ulp, first: %r" % (len(bad), bad[:5])
    else:
        bad = [(i, g, w) for i, (g, w) in enumerate(zip(got, want))
               if f32_bits(g) != f32_bits(w)]
        assert not bad, "%d elements differ, first: %r" % (len(bad), bad[:5])


def test_library_group_seed_projection_differs_from_group_zero(lib):
    p0 = library_projection(lib, 5, KIND_XAVIER_UNIFORM, 2, 16)
    p1 = library_projection(lib, group_seed(5, 1), KIND_XAVIER_UNIFORM, 2, 16)
    assert p0 == projection(5, KIND_XAVIER_UNIFORM, 2, 16)
    assert p1 == projection(group_seed(5, 1), KIND_XAVIER_UNIFORM, 2, 16)
    assert p0 != p1


def test_library_shape_tags_make_same_seed_different_shapes_unrelated(lib):
    # same seed and element count, different (rank, dim) tags -> different stream words
    a = library_projection(lib, 42, KIND_RADEMACHER, 2, 8)
    b = library_projection(lib, 42, KIND_RADEMACHER, 4, 4)
    assert a == projection(42, KIND_RADEMACHER, 2, 8)
    assert b == projection(42, KIND_RADEMACHER, 4, 4)
    assert [x > 0 for x in a] != [x > 0 for x in b]
