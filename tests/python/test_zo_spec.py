"""Regenerate the forward-only perturbation stream from docs/PROJECTION.md section 6 alone.

Philox4x32-10, the counter layout, the Rademacher and Gaussian rules and the step's
estimate are written here from the document, not from the C sources.  The tests check
the document's known answers, then compare directions and one whole training step with
the compiled library through ctypes.
"""
import ctypes
import math
import os
import struct

import numpy as np
import pytest

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
RADEMACHER, GAUSSIAN = 0, 1
PERTURB_ALL, PERTURB_Z = 0, 1


def philox(counter, key):
    """Philox4x32-10 (section 1)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (((p1 >> 32) ^ c1 ^ k0) & MASK32, p1 & MASK32,
                          ((p0 >> 32) ^ c3 ^ k1) & MASK32, p0 & MASK32)
        k0 = (k0 + 0x9E3779B9) & MASK32
        k1 = (k1 + 0xBB67AE85) & MASK32
    return (c0, c1, c2, c3)


def f32(x):
    return struct.unpack('<f', struct.pack('<f', x))[0]


def direction(seed, index, count, gaussian):
    """u_index, `count` elements (section 6)."""
    seed &= MASK64
    key = (seed & MASK32, seed >> 32)
    out = []
    for q in range((count + 3) // 4):
        x = philox((q, index & MASK32, (index >> 32) & MASK32, 0xFFFFFFFF), key)
        if gaussian:
            for x0, x1 in ((x[0], x[1]), (x[2], x[3])):
                u1 = (float(x0 >> 8) + 1.0) * 2.0 ** -24
                u2 = float(x1 >> 8) * 2.0 ** -24
                rho = math.sqrt(-2.0 * math.log(u1))
                out.append(f32(rho * math.cos(6.283185307179586 * u2)))
                out.append(f32(rho * math.sin(6.283185307179586 * u2)))
        else:
            out.extend(-1.0 if w >> 31 else 1.0 for w in x)
    return out[:count]


def ulp_close(a, b, ulps=2):
    return abs(a - b) <= ulps * np.spacing(np.float32(abs(b)))


# The table of section 6.
KNOWN = [
    (RADEMACHER, 0x0000000000000000, 0, [-1, -1, 1, 1, -1, -1, 1, -1]),
    (RADEMACHER, 0x000000000000002a, 5, [-1, 1, -1, -1, 1, -1, -1, 1]),
    (RADEMACHER, 0xffffffffffffffff, 0x100000001, [-1, -1, 1, -1, -1, 1, -1, -1]),
    (GAUSSIAN, 0x0000000000000000, 0,
     [0.662866294, -0.0944342315, -0.826330721, 2.3796711, 0.494557679, -1.0406003,
      1.79420364, -0.479293972]),
    (GAUSSIAN, 0x000000000000002a, 5,
     [-0.357826233, 0.758842528, -0.432355344, -0.546113074, 1.81927443, -0.827503741,
      -0.0790078193, 0.140352845]),
    (GAUSSIAN, 0xffffffffffffffff, 0x100000001,
     [-0.17118755, -0.13523373, 1.14061797, -1.36040723, -0.128352627, 0.706311643,
      0.901468515, -0.437486202]),
]


@pytest.mark.parametrize("dist,seed,index,expect", KNOWN)
def test_known_answers_from_the_document(dist, seed, index, expect):
    got = direction(seed, index, 8, dist == GAUSSIAN)
    for g, e in zip(got, expect):
        # the table prints %.9g: the float32 nearest to it is the value
        assert g == f32(e) if dist == RADEMACHER else ulp_close(g, f32(e))


def test_philox_known_answer_of_section_1():
    assert philox((0, 0, 0, 0), (0, 0)) == (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)


# ---- the library -------------------------------------------------------------------

LOSS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                           ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
                           ctypes.POINTER(ctypes.c_double))


class ZoOptions(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint), ("epsilon", ctypes.c_double),
                ("directions", ctypes.c_uint32), ("batch", ctypes.c_uint32),
                ("distribution", ctypes.c_int), ("perturb", ctypes.c_int),
                ("seed", ctypes.c_uint64)]


class PromptOptions(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint), ("n_tokens", ctypes.c_uint32),
                ("rank", ctypes.c_uint32), ("dim", ctypes.c_uint32),
                ("n_groups", ctypes.c_uint32), ("projection_seed", ctypes.c_uint64),
                ("projection_kind", ctypes.c_int), ("init_seed", ctypes.c_uint64),
                ("init_std", ctypes.c_float), ("flags", ctypes.c_uint)]


class OptimizerOptions(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint), ("kind", ctypes.c_int), ("lr", ctypes.c_double),
                ("beta1", ctypes.c_double), ("beta2", ctypes.c_double),
                ("eps", ctypes.c_double), ("weight_decay", ctypes.c_double),
                ("momentum", ctypes.c_double), ("max_grad_norm", ctypes.c_double),
                ("schedule", ctypes.c_int), ("warmup_steps", ctypes.c_uint64),
                ("total_steps", ctypes.c_uint64)]


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
    vp, pvp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
    sig = {
        "ulpt_prompt_create": ([pvp, ctypes.POINTER(PromptOptions)], ctypes.c_int),
        "ulpt_prompt_free": ([vp], None),
        "ulpt_prompt_params": ([vp], ctypes.POINTER(ctypes.c_float)),
        "ulpt_prompt_grads": ([vp], ctypes.POINTER(ctypes.c_float)),
        "ulpt_prompt_num_params": ([vp], ctypes.c_size_t),
        "ulpt_optimizer_create": ([pvp, vp, ctypes.POINTER(OptimizerOptions)], ctypes.c_int),
        "ulpt_optimizer_free": ([vp], None),
        "ulpt_zo_options_init": ([ctypes.POINTER(ZoOptions), ctypes.c_uint], ctypes.c_int),
        "ulpt_zo_create": ([pvp, vp, vp, ctypes.POINTER(ZoOptions)], ctypes.c_int),
        "ulpt_zo_free": ([vp], None),
        "ulpt_zo_step": ([ctypes.POINTER(ctypes.c_double), vp, LOSS_FN, vp], ctypes.c_int),
        "ulpt_zo_direction": ([ctypes.POINTER(ctypes.c_float), vp, ctypes.c_uint64],
                              ctypes.c_int),
        "ulpt_zo_position": ([vp], ctypes.c_uint64),
        "ulpt_last_error": ([], ctypes.c_char_p),
    }
    for name, (args, res) in sig.items():
        f = getattr(L, name)
        f.argtypes, f.restype = args, res
    return L


class Trainer:
    """A prompt, an SGD optimizer (lr 1, no decay: the step is exactly -g) and a zo handle."""

    def __init__(self, L, n, r, d, zo):
        self.L = L
        po = PromptOptions(1, n, r, d, 1, 1234, 0, 99, 1.0, 0)
        oo = OptimizerOptions(1, 0, 1.0, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 0, 0, 0)
        self.p, self.o, self.z = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
        assert L.ulpt_prompt_create(ctypes.byref(self.p), ctypes.byref(po)) == 0
        assert L.ulpt_optimizer_create(ctypes.byref(self.o), self.p, ctypes.byref(oo)) == 0
        rc = L.ulpt_zo_create(ctypes.byref(self.z), self.p, self.o, ctypes.byref(zo))
        assert rc == 0, L.ulpt_last_error()
        self.n = L.ulpt_prompt_num_params(self.p)

    def array(self, ptr):
        return np.ctypeslib.as_array(ptr, shape=(self.n,)).copy()

    def close(self):
        self.L.ulpt_zo_free(self.z)
        self.L.ulpt_optimizer_free(self.o)
        self.L.ulpt_prompt_free(self.p)


def options(L, dist, seed, q=1, eps=1e-3, perturb=PERTURB_ALL):
    zo = ZoOptions()
    assert L.ulpt_zo_options_init(ctypes.byref(zo), 1) == 0
    zo.distribution, zo.seed, zo.directions, zo.epsilon, zo.perturb = dist, seed, q, eps, perturb
    return zo


@pytest.mark.parametrize("dist", [RADEMACHER, GAUSSIAN])
@pytest.mark.parametrize("seed,index", [(0, 0), (42, 5), (MASK64, 0x100000001),
                                        (0x0123456789ABCDEF, 2**64 - 1)])
def test_library_directions_equal_the_document(lib, dist, seed, index):
    t = Trainer(lib, 8, 3, 40, options(lib, dist, seed))  # 104 parameters
    try:
        buf = (ctypes.c_float * t.n)()
        assert lib.ulpt_zo_direction(buf, t.z, index) == 0
        want = direction(seed, index, t.n, dist == GAUSSIAN)
        for i, (g, e) in enumerate(zip(buf, want)):
            if dist == RADEMACHER:
                assert g == e, "element %d" % i
            else:
                assert ulp_close(g, e), "element %d: %r vs %r" % (i, g, e)
    finally:
        t.close()


def test_z_only_directions_are_zero_on_scale_and_shift(lib):
    t = Trainer(lib, 4, 2, 8, options(lib, GAUSSIAN, 3, perturb=PERTURB_Z))
    try:
        buf = (ctypes.c_float * t.n)()
        assert lib.ulpt_zo_direction(buf, t.z, 7) == 0
        want = direction(3, 7, 8, True)
        assert all(ulp_close(g, e) for g, e in zip(buf[:8], want))
        assert all(v == 0.0 for v in buf[8:])
    finally:
        t.close()


@pytest.mark.parametrize("dist", [RADEMACHER, GAUSSIAN])
def test_one_step_is_the_documented_estimate(lib, dist):
    """The whole step of section 6, recomputed in float32 with NumPy from the losses the
    library was handed back: c_j, g and, with SGD at lr 1, the new parameters."""
    q, eps, seed = 3, 0.01, 2026
    t = Trainer(lib, 4, 2, 8, options(lib, dist, seed, q=q, eps=eps))
    rng = np.random.default_rng(0)
    target = rng.standard_normal(4 * 8)
    seen = []

    def host(user, emb, count, n, d, losses):
        e = np.ctypeslib.as_array(emb, shape=(count, n * d)).astype(np.float64)
        for c in range(count):
            losses[c] = 0.5 * float(np.sum((e[c] - target) ** 2))
            seen.append(losses[c])
        return 0

    cb = LOSS_FN(host)
    try:
        theta = t.array(lib.ulpt_prompt_params(t.p))
        loss = ctypes.c_double()
        assert lib.ulpt_zo_step(ctypes.byref(loss), t.z, cb, None) == 0
        assert len(seen) == 2 * q
        e32 = float(np.float32(eps))
        g = np.zeros(t.n, dtype=np.float32)
        for j in range(q):
            c = np.float32((seen[2 * j] - seen[2 * j + 1]) / (2.0 * q * e32))
            u = np.array(direction(seed, j, t.n, dist == GAUSSIAN), dtype=np.float32)
            if dist == GAUSSIAN:  # the library's own draws: libm may differ by an ulp
                buf = (ctypes.c_float * t.n)()
                lib.ulpt_zo_direction(buf, t.z, j)
                lib_u = np.frombuffer(buf, dtype=np.float32)
                assert np.all(np.abs(lib_u - u) <= 2 * np.spacing(np.abs(u)))
                u = lib_u
            g = (g + c * u).astype(np.float32)
        grads = t.array(lib.ulpt_prompt_grads(t.p))
        assert np.array_equal(grads, g)
        assert np.array_equal(t.array(lib.ulpt_prompt_params(t.p)), (theta - g).astype(np.float32))
        assert loss.value == pytest.approx(sum(seen) / (2 * q), rel=1e-15)
        assert lib.ulpt_zo_position(t.z) == q
    finally:
        t.close()


# ---- the checkpoint's ZOST section (docs/FORMAT.md, format 1.1) ------------------------

def read_sections(blob):
    """(minor, kind, {tag: (flags, payload)}) of a file, from docs/FORMAT.md's layout."""
    assert blob[:8] == b"\x89ULPT\r\n\x1a"
    major, minor, kind, length = struct.unpack_from("<HHIQ", blob, 8)
    assert major == 1 and length == len(blob)
    import zlib
    assert zlib.crc32(blob[:-4]) == struct.unpack_from("<I", blob, len(blob) - 4)[0]
    pos, out = 24, {}
    while pos < len(blob) - 4:
        tag, flags, n = struct.unpack_from("<4sIQ", blob, pos)
        out[tag.decode()] = (flags, blob[pos + 16:pos + 16 + n])
        pos += 16 + n
    return minor, kind, out


@pytest.mark.parametrize("dist,perturb", [(RADEMACHER, PERTURB_ALL), (GAUSSIAN, PERTURB_Z)])
def test_forward_only_checkpoint_holds_the_documented_zost(lib, tmp_path, dist, perturb):
    lib.ulpt_zo_checkpoint_save.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ulpt_zo_checkpoint_save.restype = ctypes.c_int
    lib.ulpt_zo_set_position.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    lib.ulpt_zo_set_position.restype = ctypes.c_int
    lib.ulpt_checkpoint_save.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p]
    lib.ulpt_checkpoint_save.restype = ctypes.c_int
    zo = options(lib, dist, 0x0123456789ABCDEF, q=3, eps=0.25, perturb=perturb)
    zo.batch = 4
    t = Trainer(lib, 4, 2, 8, zo)
    try:
        assert lib.ulpt_zo_set_position(t.z, 2**40 + 5) == 0
        path = str(tmp_path / "zo.ulpt").encode()
        assert lib.ulpt_zo_checkpoint_save(t.z, path) == 0
        minor, kind, sections = read_sections(open(path, "rb").read())
        assert (minor, kind) == (1, 2)
        assert list(sections) == ["SHAP", "META", "PARM", "OPTM", "MOM1", "MOM2", "ZOST"]
        flags, zost = sections["ZOST"]
        assert flags == 0 and len(zost) == 40  # optional: 1.0 readers skip it
        seed, position, eps, q, k, d, p = struct.unpack("<QQdIIii", zost)
        assert (seed, position, eps, q, k, d, p) == (0x0123456789ABCDEF, 2**40 + 5, 0.25, 3,
                                                      4, dist, perturb)
        # an ordinary checkpoint stays format 1.0, without ZOST
        assert lib.ulpt_checkpoint_save(t.p, t.o, path) == 0
        minor, kind, sections = read_sections(open(path, "rb").read())
        assert (minor, kind) == (0, 2) and "ZOST" not in sections
    finally:
        t.close()
