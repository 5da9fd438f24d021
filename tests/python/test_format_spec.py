"""An independent reader of the libulpt file format, written from docs/FORMAT.md and
docs/PROJECTION.md alone, checked against files the library writes.

Nothing here is taken from the C sources: the decoder (header, sections, trailer CRC,
SHAP, META, PARM with both codecs and the byte-plane layout, dtypes f32/f16/bf16, OPTM,
MOM1/MOM2) and the projection fingerprint (Philox4x32-10 streams, every kind, groups) are
implemented below from the two documents.  P is regenerated in Python; the library's
`ulpt_projection_data` is only used as a cross-check of that regeneration.

The library is driven through ctypes and is found via $ULPT_LIBRARY or
<this dir>/../../lib/libulpt.so.1.
"""

import ctypes
import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

# --------------------------------------------------------------------------------------
# Library binding
# --------------------------------------------------------------------------------------

LIB_PATH = os.environ.get("ULPT_LIBRARY") or str(
    Path(__file__).resolve().parent / ".." / ".." / "lib" / "libulpt.so.1"
)


class PromptOptions(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint),
        ("n_tokens", ctypes.c_uint32),
        ("rank", ctypes.c_uint32),
        ("dim", ctypes.c_uint32),
        ("n_groups", ctypes.c_uint32),
        ("projection_seed", ctypes.c_uint64),
        ("projection_kind", ctypes.c_int),
        ("init_seed", ctypes.c_uint64),
        ("init_std", ctypes.c_float),
        ("flags", ctypes.c_uint),
    ]


class SaveOptions(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint), ("dtype", ctypes.c_int), ("level", ctypes.c_int)]


class OptimizerOptions(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint),
        ("kind", ctypes.c_int),
        ("lr", ctypes.c_double),
        ("beta1", ctypes.c_double),
        ("beta2", ctypes.c_double),
        ("eps", ctypes.c_double),
        ("weight_decay", ctypes.c_double),
        ("momentum", ctypes.c_double),
        ("max_grad_norm", ctypes.c_double),
        ("schedule", ctypes.c_int),
        ("warmup_steps", ctypes.c_uint64),
        ("total_steps", ctypes.c_uint64),
    ]


def _load_library():
    lib = ctypes.CDLL(LIB_PATH)
    vp, c_int, c_size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    fp = ctypes.POINTER(ctypes.c_float)
    sigs = {
        "ulpt_prompt_create": (c_int, [ctypes.POINTER(vp), ctypes.POINTER(PromptOptions)]),
        "ulpt_prompt_free": (None, [vp]),
        "ulpt_prompt_num_params": (c_size, [vp]),
        "ulpt_prompt_params": (fp, [vp]),
        "ulpt_prompt_grads": (fp, [vp]),
        "ulpt_prompt_set_meta": (c_int, [vp, ctypes.c_char_p, ctypes.c_char_p]),
        "ulpt_prompt_save": (c_int, [vp, ctypes.c_char_p, ctypes.POINTER(SaveOptions)]),
        "ulpt_prompt_forward": (c_int, [vp, fp, c_size]),
        "ulpt_optimizer_create": (c_int, [ctypes.POINTER(vp), vp, ctypes.POINTER(OptimizerOptions)]),
        "ulpt_optimizer_step": (c_int, [vp]),
        "ulpt_optimizer_free": (None, [vp]),
        "ulpt_checkpoint_save": (c_int, [vp, vp, ctypes.c_char_p]),
        "ulpt_prompt_export_safetensors": (c_int, [vp, ctypes.c_char_p]),
        "ulpt_projection_create": (
            c_int,
            [ctypes.POINTER(vp), ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32, c_int],
        ),
        "ulpt_projection_data": (fp, [vp]),
        "ulpt_projection_free": (None, [vp]),
        "ulpt_prompt_load_buffer": (c_int, [ctypes.POINTER(vp), ctypes.c_char_p, c_size]),
        "ulpt_checkpoint_load": (c_int, [ctypes.POINTER(vp), ctypes.POINTER(vp), ctypes.c_char_p]),
        "ulpt_last_error": (ctypes.c_char_p, []),
    }
    for name, (res, args) in sigs.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    return lib


@pytest.fixture(scope="module")
def lib():
    if not os.path.exists(LIB_PATH):
        pytest.fail(f"library not found at {LIB_PATH} (run `make`)")
    return _load_library()


class Prompt:
    """A library prompt; frees itself."""

    def __init__(self, lib, n_tokens, rank, dim, n_groups=1, seed=0, kind=0, flags=0,
                 init_seed=1, init_std=0.02):
        self.lib = lib
        o = PromptOptions(1, n_tokens, rank, dim, n_groups, seed, kind, init_seed, init_std, flags)
        h = ctypes.c_void_p()
        rc = lib.ulpt_prompt_create(ctypes.byref(h), ctypes.byref(o))
        assert rc == 0, f"ulpt_prompt_create failed ({rc}) for {n_tokens, rank, dim, n_groups, kind, flags}"
        self.h = h
        self.n_tokens, self.rank, self.dim, self.n_groups = n_tokens, rank, dim, n_groups
        self.seed, self.kind, self.flags = seed, kind, flags

    def num_params(self):
        return self.lib.ulpt_prompt_num_params(self.h)

    def params(self):
        n = self.num_params()
        return np.ctypeslib.as_array(self.lib.ulpt_prompt_params(self.h), shape=(n,))

    def grads(self):
        n = self.num_params()
        return np.ctypeslib.as_array(self.lib.ulpt_prompt_grads(self.h), shape=(n,))

    def set_meta(self, key, value):
        rc = self.lib.ulpt_prompt_set_meta(self.h, key.encode("utf-8"), value.encode("utf-8"))
        assert rc == 0, f"ulpt_prompt_set_meta({key!r}) failed ({rc})"

    def save_rc(self, path, dtype=None, level=None):
        if dtype is None and level is None:
            return self.lib.ulpt_prompt_save(self.h, str(path).encode(), None)
        so = SaveOptions(1, dtype, level)
        return self.lib.ulpt_prompt_save(self.h, str(path).encode(), ctypes.byref(so))

    def save(self, path, dtype=None, level=None):
        rc = self.save_rc(path, dtype, level)
        assert rc == 0, f"ulpt_prompt_save failed ({rc})"
        return Path(path).read_bytes()

    def forward(self):
        out = np.zeros((self.n_tokens, self.dim), dtype=np.float32)
        rc = self.lib.ulpt_prompt_forward(
            self.h, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), self.dim)
        assert rc == 0, f"ulpt_prompt_forward failed ({rc})"
        return out

    def free(self):
        if self.h:
            self.lib.ulpt_prompt_free(self.h)
            self.h = None


@pytest.fixture
def make_prompt(lib):
    made = []

    def make(*a, **kw):
        p = Prompt(lib, *a, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.free()


# --------------------------------------------------------------------------------------
# PROJECTION.md: Philox4x32-10, streams, kinds, groups
# --------------------------------------------------------------------------------------

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
GROUP_STEP = 0x9E3779B97F4A7C15

KIND_XAVIER, KIND_KAIMING, KIND_GAUSSIAN, KIND_RADEMACHER, KIND_IDENTITY = 0, 1, 2, 3, 4


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Vectorised Philox4x32-10 over uint64 numpy arrays holding 32-bit words."""
    u64 = np.uint64
    c0, c1, c2, c3 = (np.asarray(c, dtype=u64) & u64(MASK32) for c in (c0, c1, c2, c3))
    k0, k1 = int(k0) & MASK32, int(k1) & MASK32
    for _ in range(10):
        p0 = u64(PHILOX_M0) * c0
        p1 = u64(PHILOX_M1) * c2
        c0, c1, c2, c3 = (
            (p1 >> u64(32)) ^ c1 ^ u64(k0),
            p1 & u64(MASK32),
            (p0 >> u64(32)) ^ c3 ^ u64(k1),
            p0 & u64(MASK32),
        )
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def stream_blocks(seed, t2, t3, n_blocks):
    """Blocks 0..n_blocks-1 of the stream (seed, t2, t3) as an (n_blocks, 4) uint64 array."""
    q = np.arange(n_blocks, dtype=np.uint64)
    out = philox4x32_10(q & np.uint64(MASK32), q >> np.uint64(32),
                        np.full(n_blocks, t2, dtype=np.uint64),
                        np.full(n_blocks, t3, dtype=np.uint64),
                        seed & MASK32, (seed >> 32) & MASK32)
    return np.stack(out, axis=1)


def stream_words(seed, t2, t3, n):
    return stream_blocks(seed, t2, t3, (n + 3) // 4).reshape(-1)[:n]


def normal_draws(seed, t2, t3, n, scale):
    """float32(z * scale) for the first n elements by the Box-Muller rule of section 3."""
    blocks = stream_blocks(seed, t2, t3, (n + 3) // 4)
    two_pi = 6.283185307179586
    vals = []
    for x0, x1, x2, x3 in blocks.tolist():
        for a, b in ((x0, x1), (x2, x3)):
            u1 = (float(a >> 8) + 1.0) * 2.0 ** -24
            u2 = float(b >> 8) * 2.0 ** -24
            rho = math.sqrt(-2.0 * math.log(u1))
            vals.append(rho * math.cos(two_pi * u2) * scale)
            vals.append(rho * math.sin(two_pi * u2) * scale)
    return np.array(vals[:n], dtype=np.float64).astype(np.float32)


def regenerate_projection(seed, kind, rank, dim):
    """P (rank x dim, float32) from PROJECTION.md alone."""
    n = rank * dim
    if kind == KIND_IDENTITY:
        assert rank == dim
        return np.eye(rank, dtype=np.float32)
    if kind == KIND_GAUSSIAN:
        return normal_draws(seed, rank, dim, n, 1.0 / math.sqrt(rank)).reshape(rank, dim)
    x = stream_words(seed, rank, dim, n)
    if kind == KIND_RADEMACHER:
        a = np.float32(1.0 / math.sqrt(rank))
        top = (x >> np.uint64(31)) & np.uint64(1)
        return np.where(top == 1, -a, a).astype(np.float32).reshape(rank, dim)
    if kind == KIND_XAVIER:
        a = np.float32(math.sqrt(6.0 / (rank + dim)))
    elif kind == KIND_KAIMING:
        a = np.float32(1.0 / math.sqrt(rank))
    else:
        raise ValueError(f"unknown projection kind {kind}")
    u = (x >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24)
    v = (np.float32(2.0) * u - np.float32(1.0)) * a
    assert v.dtype == np.float32
    return v.reshape(rank, dim)


def group_seed(seed, i):
    return (seed + i * GROUP_STEP) & MASK64


def fingerprint(seed, kind, rank, dim, n_groups):
    if kind == KIND_IDENTITY:
        return 0
    crc = 0
    for g in range(n_groups):
        P = regenerate_projection(group_seed(seed, g), kind, rank, dim)
        crc = zlib.crc32(P.astype("<f4").tobytes(), crc)
    return crc & MASK32


# --------------------------------------------------------------------------------------
# FORMAT.md: the decoder
# --------------------------------------------------------------------------------------

MAGIC = b"\x89ULPT\r\n\x1a"
KNOWN_TAGS = {b"SHAP", b"META", b"PARM", b"OPTM", b"MOM1", b"MOM2", b"ZOST"}  # ZOST: 1.1


class FormatError(Exception):
    pass


def f32_to_bf16_bits(values):
    """float32 -> bfloat16 bit patterns, round to nearest even (NaN kept quiet)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    nan = np.isnan(np.asarray(values, dtype=np.float32))
    rounded = np.where(nan, (bits >> np.uint64(16)) | np.uint64(0x40), rounded)
    return rounded.astype(np.uint16)


def bf16_bits_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint32) << np.uint32(16)).view(np.float32)


DTYPE_SIZE = {0: 4, 1: 2, 2: 2}


def decode_tensor(payload):
    """A *tensor payload* -> dict(dtype, codec, count, data_length, raw, values)."""
    if len(payload) < 24:
        raise FormatError("tensor payload shorter than 24 bytes")
    dtype, codec, count, dlen = struct.unpack_from("<IIQQ", payload, 0)
    if dtype not in DTYPE_SIZE:
        raise FormatError(f"unknown dtype {dtype}")
    if dlen != len(payload) - 24:
        raise FormatError(f"data length {dlen} != payload length - 24 = {len(payload) - 24}")
    e = DTYPE_SIZE[dtype]
    data = payload[24:]
    if codec == 0:
        if dlen != count * e:
            raise FormatError(f"stored data length {dlen} != count*e = {count * e}")
        raw = np.frombuffer(data, dtype=np.uint8).reshape(count, e)
    elif codec == 1:
        if count * e > 1032 * dlen + 64:  # zlib expands at most 1032:1, plus fixed bytes
            raise FormatError(f"{dlen} zlib bytes cannot hold {count * e}")
        d = zlib.decompressobj()
        try:
            planes = d.decompress(data)
        except zlib.error as err:
            raise FormatError(f"not a zlib stream: {err}")
        if not d.eof:
            raise FormatError("zlib stream not terminated")
        if d.unused_data:
            raise FormatError(f"{len(d.unused_data)} bytes follow the zlib stream")
        if len(planes) != count * e:
            raise FormatError(f"zlib inflates to {len(planes)} bytes, expected {count * e}")
        # byte planes: plane j holds byte j (LSB first) of every element
        raw = np.frombuffer(planes, dtype=np.uint8).reshape(e, count).T
    else:
        raise FormatError(f"unknown codec {codec}")
    le = np.ascontiguousarray(raw).tobytes()  # element-major little-endian bytes
    if dtype == 0:
        values = np.frombuffer(le, dtype="<f4").astype(np.float32)
        bits = np.frombuffer(le, dtype="<u4")
    elif dtype == 1:
        values = np.frombuffer(le, dtype="<f2").astype(np.float32)
        bits = np.frombuffer(le, dtype="<u2")
    else:
        bits = np.frombuffer(le, dtype="<u2")
        values = bf16_bits_to_f32(bits)
    return dict(dtype=dtype, codec=codec, count=count, data_length=dlen,
                bits=bits.copy(), values=values)


def decode_meta(payload):
    pos = 0

    def take(n):
        nonlocal pos
        if pos + n > len(payload):
            raise FormatError("META runs past its payload")
        b = payload[pos:pos + n]
        pos += n
        return b

    (count,) = struct.unpack("<I", take(4))
    if count > 1024:
        raise FormatError(f"META count {count} > 1024")
    entries = []
    for _ in range(count):
        (k,) = struct.unpack("<I", take(4))
        if not 1 <= k <= 255:
            raise FormatError(f"key length {k}")
        key = take(k)
        (v,) = struct.unpack("<I", take(4))
        if v > 65535:
            raise FormatError(f"value length {v}")
        value = take(v)
        if b"\0" in key or b"\0" in value:
            raise FormatError("NUL in metadata")
        try:
            entries.append((key.decode("utf-8"), value.decode("utf-8")))
        except UnicodeDecodeError as e:  # Python's codec is RFC 3629's well-formed UTF-8
            raise FormatError(f"metadata is not UTF-8: {e}")
    if pos != len(payload):
        raise FormatError(f"META payload has {len(payload) - pos} trailing bytes")
    keys = [k for k, _ in entries]
    if len(set(keys)) != len(keys):
        raise FormatError("duplicate META key")
    return entries


def decode_shape(payload):
    # at least 48 bytes; a later minor version's fields after them are ignored
    if len(payload) < 48:
        raise FormatError(f"SHAP payload is {len(payload)} bytes, less than 48")
    (n_tokens, rank, dim, n_groups, seed, kind, flags, fp, reserved,
     n_params) = struct.unpack_from("<IIIIQIIIIQ", payload)
    return dict(n_tokens=n_tokens, rank=rank, dim=dim, n_groups=n_groups, seed=seed,
                kind=kind, flags=flags, fingerprint=fp, reserved=reserved, n_params=n_params)


OPTM_FIELDS = ("kind", "schedule", "lr", "beta1", "beta2", "eps", "weight_decay", "momentum",
               "max_grad_norm", "warmup_steps", "total_steps", "steps")


def decode_optm(payload):
    if len(payload) < 88:
        raise FormatError(f"OPTM payload is {len(payload)} bytes, less than 88")
    return dict(zip(OPTM_FIELDS, struct.unpack_from("<iidddddddQQQ", payload)))


def expected_n_params(n_tokens, rank, dim, flags):
    noscale, noshift = flags & 1, (flags >> 1) & 1
    return n_tokens * rank + dim * (1 - noscale) + dim * (1 - noshift)


def decode_file(blob, check_fingerprint=True):
    """Decode a whole file; raises FormatError for anything FORMAT.md forbids."""
    if len(blob) < 28:
        raise FormatError("shorter than header + trailer")
    if blob[:8] != MAGIC:
        raise FormatError("bad magic")
    major, minor, kind, length = struct.unpack_from("<HHIQ", blob, 8)
    if major != 1:
        raise FormatError(f"major version {major}")
    if length != len(blob):
        raise FormatError(f"file length field {length} != actual {len(blob)}")
    (crc,) = struct.unpack_from("<I", blob, len(blob) - 4)
    if crc != zlib.crc32(blob[:-4]) & MASK32:
        raise FormatError("CRC mismatch")
    if kind not in (1, 2):
        raise FormatError(f"file kind {kind}")
    end = len(blob) - 4
    pos = 24
    sections = []  # (tag, flags, payload) in file order
    while pos < end:
        if pos + 16 > end:
            raise FormatError("section header runs into the trailer")
        tag, sflags, plen = struct.unpack_from("<4sIQ", blob, pos)
        if pos + 16 + plen > end:
            raise FormatError(f"section {tag!r} runs into the trailer")
        if any(t == tag for t, _, _ in sections):  # known or not
            raise FormatError(f"duplicate section {tag!r}")
        if len(sections) == 64:
            raise FormatError("more than 64 sections")
        sections.append((tag, sflags, blob[pos + 16:pos + 16 + plen]))
        pos += 16 + plen
    if pos != end:
        raise FormatError("sections do not end at the trailer")
    out = dict(major=major, minor=minor, kind=kind, length=length, crc=crc,
               order=[t.decode("ascii") for t, _, _ in sections],
               section_flags={t.decode("ascii"): f for t, f, _ in sections},
               unknown=[])
    by_tag = {}
    for tag, sflags, payload in sections:
        if tag not in KNOWN_TAGS:
            if sflags & 1:
                raise FormatError(f"unknown required section {tag!r}")
            out["unknown"].append(tag.decode("ascii", "replace"))
            continue
        by_tag[tag] = payload
    for req in (b"SHAP", b"PARM"):
        if req not in by_tag:
            raise FormatError(f"missing {req!r}")
    if kind == 2:
        for req in (b"OPTM", b"MOM1", b"MOM2"):
            if req not in by_tag:
                raise FormatError(f"checkpoint missing {req!r}")
    elif any(t in by_tag for t in (b"OPTM", b"MOM1", b"MOM2")):
        raise FormatError("prompt file with optimizer sections")
    elif b"ZOST" in by_tag:
        raise FormatError("prompt file with a forward-only section")
    if b"ZOST" in by_tag:  # format 1.1: seed, position, epsilon, q, k, distribution, perturb
        if len(by_tag[b"ZOST"]) < 40:
            raise FormatError("ZOST shorter than 40 bytes")
        out["zost"] = struct.unpack_from(ZOST_FMT, by_tag[b"ZOST"])
    shape = decode_shape(by_tag[b"SHAP"])
    out["shape"] = shape
    if shape["reserved"] != 0:
        raise FormatError("SHAP reserved field is not 0")
    if shape["n_params"] != expected_n_params(shape["n_tokens"], shape["rank"], shape["dim"],
                                              shape["flags"]):
        raise FormatError("parameter count disagrees with the formula")
    if check_fingerprint:
        want = fingerprint(shape["seed"], shape["kind"], shape["rank"], shape["dim"],
                           shape["n_groups"])
        if want != shape["fingerprint"]:
            raise FormatError(f"fingerprint {shape['fingerprint']:#010x} != regenerated {want:#010x}")
    out["meta"] = decode_meta(by_tag[b"META"]) if b"META" in by_tag else None
    parm = decode_tensor(by_tag[b"PARM"])
    if parm["count"] != shape["n_params"]:
        raise FormatError("PARM count != shape's number of parameters")
    out["parm"] = parm
    if b"OPTM" in by_tag:
        out["optm"] = decode_optm(by_tag[b"OPTM"])
    for t in (b"MOM1", b"MOM2"):
        if t in by_tag:
            out[t.decode().lower()] = decode_tensor(by_tag[t])
    if kind == 2 and any(out[t]["dtype"] != 0 for t in ("parm", "mom1", "mom2")):
        raise FormatError("checkpoint tensors must be dtype 0")
    return out


def build_file(kind, sections, minor=0):
    """Assemble a container (used to exercise the decoder on forged files)."""
    body = b"".join(struct.pack("<4sIQ", t, f, len(p)) + p for t, f, p in sections)
    total = 24 + len(body) + 4
    head = MAGIC + struct.pack("<HHIQ", 1, minor, kind, total)
    blob = head + body
    return blob + struct.pack("<I", zlib.crc32(blob) & MASK32)


def split_sections(blob):
    pos, out = 24, []
    while pos < len(blob) - 4:
        tag, f, n = struct.unpack_from("<4sIQ", blob, pos)
        out.append((tag, f, blob[pos + 16:pos + 16 + n]))
        pos += 16 + n
    return out


# --------------------------------------------------------------------------------------
# Tests of the independent implementations themselves (PROJECTION.md known answers)
# --------------------------------------------------------------------------------------

def test_philox_known_answers():
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((MASK32,) * 4, (MASK32, MASK32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for c, k, want in cases:
        got = tuple(int(w[()]) for w in philox4x32_10(*c, *k))
        assert got == want, f"Philox({c}, {k}) = {[hex(g) for g in got]}"


@pytest.mark.parametrize("kind,seed,rank,dim,want", [
    (KIND_XAVIER, 0x0, 2, 8, "0.103211403 -0.106706351 -0.0683019534 0.263060868 -0.617932498 0.608003616 -0.760690331 -0.348780572"),
    (KIND_XAVIER, 0x2A, 2, 4096, "-0.0300244577 -0.0139829908 0.0235981196 -0.0144388722 0.0207396615 0.00806771405 -0.00985047501 -0.0246411879"),
    (KIND_KAIMING, 0x2A, 2, 4, "-0.35200423 0.304275364 0.494487047 -0.365611106 -0.382691354 -0.00233493536 0.0649061427 0.413901418"),
    (KIND_RADEMACHER, 0x0123456789ABCDEF, 4, 4, "-0.5 0.5 -0.5 -0.5 -0.5 0.5 0.5 0.5"),
    (KIND_GAUSSIAN, 0x7, 2, 4, "0.619449079 0.692641258 0.00787196495 -0.459549218 -1.32486641 0.325896889 -0.177850485 -1.08561027"),
    (KIND_GAUSSIAN, 0xFFFFFFFFFFFFFFFF, 3, 5, "0.204641238 0.0160179231 -0.179688737 0.24164705 -0.00780931162 0.0397978052 0.376344085 0.74544847"),
], ids=["xavier-2x8", "xavier-2x4096", "kaiming-2x4", "rademacher-4x4", "gaussian-2x4", "gaussian-3x5"])
def test_regenerated_projection_matches_documented_known_answers(kind, seed, rank, dim, want):
    P = regenerate_projection(seed, kind, rank, dim).reshape(-1)[:8]
    want = np.array([float(w) for w in want.split()], dtype=np.float32)
    assert ["%.9g" % v for v in P] == ["%.9g" % v for v in want]


def test_regenerated_initial_z_matches_documented_known_answer():
    z = normal_draws(1, 2, 0, 8, float(np.float32(0.5)))
    want = "-0.214431375 -0.0704231113 0.811836123 0.204263523 0.250748426 -0.321006864 0.764864564 0.274602562"
    assert ["%.9g" % v for v in z] == want.split()


def test_group_seed_matches_documented_known_answer():
    assert group_seed(5, 0) == 5
    assert group_seed(5, 1) == 11400714819323198490


@pytest.mark.parametrize("kind,seed,rank,dim", [
    (KIND_XAVIER, 3, 3, 17), (KIND_KAIMING, 2**63 + 1, 5, 6), (KIND_RADEMACHER, 9, 2, 9),
    (KIND_GAUSSIAN, 11, 4, 13), (KIND_IDENTITY, 1, 6, 6),
])
def test_regenerated_projection_equals_library_projection(lib, kind, seed, rank, dim):
    h = ctypes.c_void_p()
    assert lib.ulpt_projection_create(ctypes.byref(h), seed, rank, dim, kind) == 0
    try:
        ptr = lib.ulpt_projection_data(h)
        # PROJECTION.md: identity is "P = I; nothing is generated" -- the library then
        # returns no data (NULL); anything it does return must be I.
        if kind == KIND_IDENTITY and not ptr:
            return
        got = np.ctypeslib.as_array(ptr, shape=(rank * dim,)).copy()
    finally:
        lib.ulpt_projection_free(h)
    want = regenerate_projection(seed, kind, rank, dim).reshape(-1)
    if kind == KIND_GAUSSIAN:
        ulps = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64))
        assert ulps.max() <= 2
    else:
        assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist()


# --------------------------------------------------------------------------------------
# Tests of the decoder on forged files (rules a reader must follow)
# --------------------------------------------------------------------------------------

def _tiny_sections():
    shap = struct.pack("<IIIIQIIIIQ", 1, 1, 1, 1, 0, KIND_IDENTITY, 3, 0, 0, 1)
    parm = struct.pack("<IIQQ", 0, 0, 1, 4) + struct.pack("<f", 1.5)
    return [(b"SHAP", 1, shap), (b"PARM", 1, parm)]


def test_decoder_skips_unknown_optional_section_and_refuses_unknown_required_one():
    secs = _tiny_sections()
    f = decode_file(build_file(1, secs[:1] + [(b"XTRA", 0, b"abc")] + secs[1:], minor=3))
    assert f["unknown"] == ["XTRA"] and f["parm"]["values"].tolist() == [1.5]
    with pytest.raises(FormatError, match="unknown required"):
        decode_file(build_file(1, secs + [(b"XTRA", 1, b"abc")]))


def test_decoder_refuses_corruption_truncation_and_bad_versions():
    good = build_file(1, _tiny_sections())
    decode_file(good)
    bad = bytearray(good); bad[-10] ^= 1
    with pytest.raises(FormatError, match="CRC"):
        decode_file(bytes(bad))
    with pytest.raises(FormatError, match="length"):
        decode_file(good + b"\0")
    bad = bytearray(good); bad[8] = 2
    with pytest.raises(FormatError, match="major"):
        decode_file(bytes(bad))
    with pytest.raises(FormatError, match="duplicate"):
        decode_file(build_file(1, _tiny_sections() + _tiny_sections()[:1]))


def test_decoder_reads_byte_planes_in_lsb_first_order():
    vals = np.array([1.0, -2.5, 3.25e-3], dtype="<f4")
    planes = b"".join(bytes(vals.view(np.uint8).reshape(3, 4)[:, j]) for j in range(4))
    data = zlib.compress(planes)
    t = decode_tensor(struct.pack("<IIQQ", 0, 1, 3, len(data)) + data)
    assert t["values"].tolist() == vals.tolist()
    with pytest.raises(FormatError, match="follow"):
        decode_tensor(struct.pack("<IIQQ", 0, 1, 3, len(data) + 1) + data + b"\0")


# --------------------------------------------------------------------------------------
# Files written by the library
# --------------------------------------------------------------------------------------

SHAPES = {
    # name: (n_tokens, rank, dim, n_groups, seed, kind, flags)
    "xavier-4x2x8": (4, 2, 8, 1, 0, KIND_XAVIER, 0),
    "kaiming-groups3-noscale": (6, 3, 16, 3, 0x0123456789ABCDEF, KIND_KAIMING, 1),
    "gaussian-groups2-noshift": (8, 4, 12, 2, 7, KIND_GAUSSIAN, 2),
    "identity-noscale-noshift": (5, 8, 8, 1, 99, KIND_IDENTITY, 3),
    "rademacher-groups4-maxseed": (4, 5, 33, 4, MASK64, KIND_RADEMACHER, 0),
    "xavier-groups2-wide": (10, 2, 700, 2, 0xDEADBEEF12345678, KIND_XAVIER, 0),
}

METADATA = [
    ("model", "llama-3-8b"),
    ("task", "résumé → 要約 🧪"),          # non-ASCII UTF-8 (2-, 3- and 4-byte sequences)
    ("created", "2024-05-01T12:00:00Z"),
    ("ключ", ""),                           # non-ASCII key, empty value
]


def _random_params(n, rng, compressible=False):
    if compressible:
        return (rng.integers(-4, 5, size=n) * 0.25).astype(np.float32)
    return (rng.standard_normal(n) * rng.choice([1e-3, 0.05, 1.0, 30.0], size=n)).astype(np.float32)


def _expected_encoding(values, dtype):
    """(bit patterns, decoded float32 values) the file should hold for float32 params."""
    if dtype == 0:
        return values.view(np.uint32), values
    if dtype == 1:
        h = values.astype(np.float16)
        return h.view(np.uint16), h.astype(np.float32)
    b = f32_to_bf16_bits(values)
    return b, bf16_bits_to_f32(b)


def _check_common(f, blob, prompt, file_kind):
    assert blob[:8] == MAGIC
    assert (f["major"], f["minor"]) == (1, 0)
    assert f["kind"] == file_kind
    assert f["length"] == len(blob)
    assert f["crc"] == zlib.crc32(blob[:-4]) & MASK32
    s = f["shape"]
    assert (s["n_tokens"], s["rank"], s["dim"], s["n_groups"]) == (
        prompt.n_tokens, prompt.rank, prompt.dim, prompt.n_groups)
    assert (s["seed"], s["kind"], s["flags"]) == (prompt.seed, prompt.kind, prompt.flags)
    assert s["reserved"] == 0
    n = expected_n_params(prompt.n_tokens, prompt.rank, prompt.dim, prompt.flags)
    assert s["n_params"] == n == prompt.num_params() == f["parm"]["count"]
    assert s["fingerprint"] == fingerprint(prompt.seed, prompt.kind, prompt.rank, prompt.dim,
                                           prompt.n_groups)
    if prompt.kind == KIND_IDENTITY:
        assert s["fingerprint"] == 0
    # required bit on the required sections; no other flag bits anywhere
    for tag in ("SHAP", "PARM") + (("OPTM", "MOM1", "MOM2") if file_kind == 2 else ()):
        assert f["section_flags"][tag] == 1, f"{tag} flags {f['section_flags'][tag]:#x}"
    for tag, fl in f["section_flags"].items():
        assert fl & ~1 == 0, f"{tag} has flag bits {fl:#x}"
    assert f["unknown"] == []


@pytest.mark.parametrize("with_meta", [False, True], ids=["nometa", "meta"])
@pytest.mark.parametrize("level", [0, 6], ids=["level0", "level6"])
@pytest.mark.parametrize("dtype", [0, 1, 2], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_saved_prompt_decodes_independently(make_prompt, tmp_path, shape, dtype, level, with_meta):
    n_tokens, rank, dim, n_groups, seed, kind, flags = SHAPES[shape]
    p = make_prompt(n_tokens, rank, dim, n_groups, seed, kind, flags)
    rng = np.random.default_rng(zlib.crc32(repr((shape, dtype, level, with_meta)).encode()))
    params = p.params()
    # every other case uses very compressible values so that codec 1 is exercised too
    params[:] = _random_params(params.size, rng, compressible=with_meta)
    snapshot = params.copy()
    if with_meta:
        for k, v in METADATA:
            p.set_meta(k, v)
    blob = p.save(tmp_path / "p.ulpt", dtype, level)
    f = decode_file(blob)
    _check_common(f, blob, p, file_kind=1)

    meta = f["meta"]
    if with_meta:
        assert meta is not None and dict(meta) == dict(METADATA)
    else:
        assert not meta  # absent, or present with count 0

    t = f["parm"]
    e = DTYPE_SIZE[dtype]
    assert t["dtype"] == dtype
    assert t["count"] == snapshot.size
    if t["codec"] == 0:
        assert t["data_length"] == snapshot.size * e
    else:
        assert t["codec"] == 1
        assert t["data_length"] < snapshot.size * e, "codec 1 used although not smaller"
    if level == 0:
        assert t["codec"] == 0, "zlib level 0 can never be smaller than stored"
    bits, values = _expected_encoding(snapshot, dtype)
    assert t["bits"].tolist() == bits.tolist()
    if dtype == 0:
        assert t["values"].view(np.uint32).tolist() == snapshot.view(np.uint32).tolist()
    else:
        assert np.array_equal(t["values"], values)


def test_compressible_parameters_use_zlib_byte_planes(make_prompt, tmp_path):
    p = make_prompt(64, 8, 64, 1, 1, KIND_XAVIER, 0)
    p.params()[:] = 0.5
    for dtype in (0, 1, 2):
        f = decode_file(p.save(tmp_path / f"c{dtype}.ulpt", dtype, 9))
        t = f["parm"]
        assert t["codec"] == 1, f"dtype {dtype}: writer stored {t['count']} constant values uncompressed"
        assert np.all(t["values"] == 0.5)


@pytest.mark.parametrize("dtype", [1, 2], ids=["f16", "bf16"])
def test_half_precision_rounding_of_edge_values(make_prompt, tmp_path, dtype):
    # ties, subnormals, signed zero, the largest values each dtype holds: the library's
    # f16/bf16 must equal numpy's float16 conversion / round-to-nearest-even bfloat16
    edge = [
        0.0, -0.0, 1.0, -1.0,
        1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11,            # f16 ties (to even: down, up)
        1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8,              # bf16 ties
        1.0 + 2.0 ** -8 + 2.0 ** -20,                      # just above a bf16 tie
        6.0e-8, 3.0e-5, 2.0 ** -24, 2.0 ** -25, 1.5 * 2.0 ** -25,  # f16 subnormal range
        65504.0, 65519.0, -65519.99,                       # f16 max and what rounds to it
        1e-40, -1e-42,                                     # f32 subnormals
        float(np.float32(np.pi)), float(np.float32(-np.e)),
    ]
    if dtype == 2:
        edge += [65520.0, 1e5, -1e6, 3.0e38, -3.3e38]      # beyond f16, within bf16
    edge = np.array(edge, dtype=np.float32)
    n_tokens, rank, dim = 4, 8, 8  # 4*8 + 16 = 48 params
    p = make_prompt(n_tokens, rank, dim, 1, 0, KIND_XAVIER, 0)
    params = p.params()
    params[:] = 0.25
    params[:edge.size] = edge
    snapshot = params.copy()
    with np.errstate(over="ignore"):
        bits, _ = _expected_encoding(snapshot, dtype)
    f = decode_file(p.save(tmp_path / "e.ulpt", dtype, 0))
    got = f["parm"]["bits"]
    bad = [(float(snapshot[i]), hex(int(got[i])), hex(int(bits[i])))
           for i in range(snapshot.size) if got[i] != bits[i]]
    assert not bad, f"(value, library bits, expected bits): {bad}"


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, 65520.0, -1e6])
def test_values_a_file_cannot_hold_are_refused_not_stored(make_prompt, tmp_path, value):
    # NaN and infinity in any dtype, and f16 overflow, make the save fail (-7) and
    # leave no file behind
    p = make_prompt(4, 2, 8, 1, 0, KIND_XAVIER, 0)
    p.params()[3] = value
    finite = np.isfinite(value)
    for dtype in (0, 1, 2):
        path = tmp_path / ("v%d.ulpt" % dtype)
        rc = p.save_rc(path, dtype, 6)
        if finite and dtype != 1:
            assert rc == 0  # only f16 cannot hold it
        else:
            assert rc == -7 and not path.exists()


def test_default_save_options_give_a_decodable_file(make_prompt, tmp_path):
    p = make_prompt(6, 3, 10, 2, 5, KIND_GAUSSIAN, 0)
    p.params()[:] = _random_params(p.num_params(), np.random.default_rng(3))
    blob = p.save(tmp_path / "d.ulpt")
    f = decode_file(blob)
    _check_common(f, blob, p, file_kind=1)
    assert f["parm"]["dtype"] in (0, 1, 2)


def test_documented_example_byte_count(make_prompt, tmp_path):
    p = make_prompt(4, 2, 8)
    blob = p.save(tmp_path / "ex.ulpt", 0, 0)
    documented = 24 + 16 + 48 + 16 + 4 + 16 + 24 + 24 * 4 + 4
    assert documented == 248
    assert len(blob) == documented
    f = decode_file(blob)
    assert sorted(f["order"]) == ["META", "PARM", "SHAP"]
    assert f["meta"] == []  # the example counts a META section with count 0
    assert f["shape"]["n_params"] == 24
    assert (f["parm"]["dtype"], f["parm"]["codec"]) == (0, 0)


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------

def _checkpoint(lib, prompt, path, opts, steps, grad_fn):
    opt = ctypes.c_void_p()
    assert lib.ulpt_optimizer_create(ctypes.byref(opt), prompt.h, ctypes.byref(opts)) == 0
    try:
        for s in range(steps):
            prompt.grads()[:] = grad_fn(s)
            assert lib.ulpt_optimizer_step(opt) == 0
        assert lib.ulpt_checkpoint_save(prompt.h, opt, str(path).encode()) == 0
    finally:
        lib.ulpt_optimizer_free(opt)
    return Path(path).read_bytes()


OPT_CASES = {
    #        kind sched  lr     b1    b2     eps   wd    mom  clip   warm total steps
    "sgd":   (0,   0,   0.1,   0.9,  0.999, 1e-8, 0.0,  0.9, 0.0,   0,   0,    3),
    "adam":  (1,   1,   1e-3,  0.8,  0.95,  1e-6, 0.0,  0.0, 0.0,   2,   100,  4),
    "adamw": (2,   2,   3e-4,  0.9,  0.999, 1e-8, 0.01, 0.0, 1e30,  1,   50,   5),
}


@pytest.mark.parametrize("case", list(OPT_CASES), ids=list(OPT_CASES))
def test_checkpoint_decodes_with_optimizer_state_and_moments(lib, make_prompt, tmp_path, case):
    kind, sched, lr, b1, b2, eps, wd, mom, clip, warm, total, steps = OPT_CASES[case]
    opts = OptimizerOptions(1, kind, lr, b1, b2, eps, wd, mom, clip, sched, warm, total)
    p = make_prompt(6, 3, 10, 2, 42, KIND_XAVIER, 0)
    n = p.num_params()
    p.params()[:] = _random_params(n, np.random.default_rng(7))
    g = (np.random.default_rng(8).standard_normal(n) * 0.01).astype(np.float32)
    blob = _checkpoint(lib, p, tmp_path / "ck.ulpt", opts, steps, lambda s: g)
    params_after = p.params().copy()

    f = decode_file(blob)
    _check_common(f, blob, p, file_kind=2)
    o = f["optm"]
    assert (o["kind"], o["schedule"]) == (kind, sched)
    assert (o["lr"], o["beta1"], o["beta2"], o["eps"]) == (lr, b1, b2, eps)
    assert (o["weight_decay"], o["momentum"], o["max_grad_norm"]) == (wd, mom, clip)
    assert (o["warmup_steps"], o["total_steps"]) == (warm, total)
    assert o["steps"] == steps

    parm = f["parm"]
    # FORMAT.md does not say which dtype a checkpoint's PARM uses; anything but float32
    # would lose the trained values, so demand float32 and exact values.
    assert parm["dtype"] == 0
    assert parm["values"].view(np.uint32).tolist() == params_after.view(np.uint32).tolist()
    for m in ("mom1", "mom2"):
        t = f[m]
        assert t["dtype"] == 0, f"{m} dtype {t['dtype']}"
        assert t["count"] == parm["count"] == n
    m1, m2 = f["mom1"]["values"], f["mom2"]["values"]
    if kind == 0:
        # SGD: momentum buffer in MOM1, zeros in MOM2
        assert np.all(m2 == 0)
        assert np.any(m1 != 0)
    else:
        # Adam/AdamW with a constant gradient and clipping off: m = (1-b1^t) g, v = (1-b2^t) g^2
        np.testing.assert_allclose(m1, (1 - b1 ** steps) * g, rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(m2, (1 - b2 ** steps) * g.astype(np.float64) ** 2,
                                   rtol=1e-4, atol=1e-12)


def test_checkpoint_file_length_and_section_sizes(lib, make_prompt, tmp_path):
    p = make_prompt(4, 2, 8, 1, 0, KIND_XAVIER, 1)
    n = p.num_params()
    opts = OptimizerOptions(1, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 0, 0, 0)
    blob = _checkpoint(lib, p, tmp_path / "k.ulpt", opts, 2, lambda s: np.full(n, 0.1, np.float32))
    secs = {t.decode(): (fl, pl) for t, fl, pl in split_sections(blob)}
    assert len(secs["OPTM"][1]) == 88
    assert len(secs["SHAP"][1]) == 48
    total = 24 + 4 + sum(16 + len(pl) for _, pl in secs.values())
    assert total == len(blob)
    f = decode_file(blob)
    assert f["kind"] == 2 and f["optm"]["steps"] == 2


# --------------------------------------------------------------------------------------
# safetensors export
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["xavier-4x2x8", "gaussian-groups2-noshift",
                                   "identity-noscale-noshift", "kaiming-groups3-noscale"])
def test_safetensors_export_matches_forward(make_prompt, tmp_path, shape):
    n_tokens, rank, dim, n_groups, seed, kind, flags = SHAPES[shape]
    p = make_prompt(n_tokens, rank, dim, n_groups, seed, kind, flags)
    p.params()[:] = _random_params(p.num_params(), np.random.default_rng(11))
    p.set_meta("task", "ünïcödé ✓")
    path = tmp_path / "e.safetensors"
    assert p.lib.ulpt_prompt_export_safetensors(p.h, str(path).encode()) == 0
    blob = path.read_bytes()

    (hlen,) = struct.unpack_from("<Q", blob, 0)
    assert 8 + hlen <= len(blob)
    header = json.loads(blob[8:8 + hlen].decode("utf-8"))
    assert isinstance(header, dict)
    meta = header.pop("__metadata__", None)
    if meta is not None:
        assert isinstance(meta, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert list(header) == ["prompt_embeddings"]
    t = header["prompt_embeddings"]
    assert t["dtype"] == "F32"
    assert t["shape"] == [n_tokens, dim]
    start, end = t["data_offsets"]
    buf = blob[8 + hlen:]
    assert start == 0 and end == len(buf) == n_tokens * dim * 4
    emb = np.frombuffer(buf[start:end], dtype="<f4").reshape(n_tokens, dim)
    fwd = p.forward()
    assert emb.view(np.uint32).tolist() == fwd.view(np.uint32).tolist()


# --------------------------------------------------------------------------------------
# The error table of FORMAT.md ("What a loader checks"), against the library: each row
# forged from files the library wrote, loaded through ulpt_prompt_load_buffer or
# ulpt_checkpoint_load, must give the documented code; the decoder above agrees on the
# rules it implements.
# --------------------------------------------------------------------------------------

OK, FORMAT, CORRUPT, MISMATCH, INVALID = 0, -4, -5, -6, -1
SHAP_FMT = "<IIIIQIIIIQ"
OPTM_FMT = "<iidddddddQQQ"
ZOST_FMT = "<QQdIIii"


def with_zost(blob, **fields):
    """blob (a checkpoint) with a ZOST section: a valid state, then `fields` changed."""
    f = dict(seed=5, position=9, epsilon=1e-3, q=2, k=4, distribution=0, perturb=0)
    f.update(fields)
    payload = struct.pack(ZOST_FMT, f["seed"], f["position"], f["epsilon"], f["q"], f["k"],
                          f["distribution"], f["perturb"])
    return rebuild(blob, sections_of(blob) + [[b"ZOST", 0, payload[:f.get("size", 40)]]])


def lib_load(lib, blob, checkpoint, tmp_path):
    """(rc, message) of loading blob as a prompt (buffer) or a checkpoint (file)."""
    p, o = ctypes.c_void_p(), ctypes.c_void_p()
    if checkpoint:
        path = tmp_path / "forged.ulpt"
        path.write_bytes(blob)
        rc = lib.ulpt_checkpoint_load(ctypes.byref(p), ctypes.byref(o), str(path).encode())
    else:
        rc = lib.ulpt_prompt_load_buffer(ctypes.byref(p), blob, len(blob))
    msg = lib.ulpt_last_error().decode("utf-8", "replace") if rc else ""
    if o:
        lib.ulpt_optimizer_free(o)
    if p:
        lib.ulpt_prompt_free(p)
    return rc, msg


def reseal(blob):
    blob = bytearray(blob)
    blob[16:24] = struct.pack("<Q", len(blob))
    blob[-4:] = struct.pack("<I", zlib.crc32(bytes(blob[:-4])) & MASK32)
    return bytes(blob)


def with_header(blob, offset, fmt, value):
    b = bytearray(blob)
    struct.pack_into(fmt, b, offset, value)
    return reseal(b)


def sections_of(blob):
    return [list(x) for x in split_sections(blob)]


def rebuild(blob, secs, kind=None):
    minor = struct.unpack_from("<H", blob, 10)[0]
    return build_file(kind or struct.unpack_from("<I", blob, 12)[0], [tuple(x) for x in secs],
                      minor)


def edit_section(blob, tag, fn):
    secs = sections_of(blob)
    for x in secs:
        if x[0] == tag:
            x[2] = fn(bytearray(x[2]))
    return rebuild(blob, secs)


def edit_field(blob, tag, fmt, index, value):
    """Field `index` of a fixed-size payload (SHAP, OPTM, a tensor header), set."""
    def fn(payload):
        fields = list(struct.unpack_from(fmt, payload))
        fields[index] = value
        struct.pack_into(fmt, payload, 0, *fields)
        return bytes(payload)
    return edit_section(blob, tag, fn)


def with_shape(blob, **kw):
    """SHAP fields changed, the parameter count kept consistent with the formula."""
    names = ["n_tokens", "rank", "dim", "n_groups", "seed", "kind", "flags", "fp", "reserved",
             "n_params"]

    def fn(payload):
        f = dict(zip(names, struct.unpack_from(SHAP_FMT, payload)))
        f.update(kw)
        if "n_params" not in kw:
            f["n_params"] = expected_n_params(f["n_tokens"], f["rank"], f["dim"], f["flags"])
        struct.pack_into(SHAP_FMT, payload, 0, *[f[n] for n in names])
        return bytes(payload)
    return edit_section(blob, b"SHAP", fn)


def meta_payload(pairs):
    out = struct.pack("<I", len(pairs))
    for k, v in pairs:
        out += struct.pack("<I", len(k)) + k + struct.pack("<I", len(v)) + v
    return out


def with_meta(blob, pairs):
    return edit_section(blob, b"META", lambda _: meta_payload(pairs))


def stored_tensor(values, dtype=0):
    data = np.asarray(values, dtype={0: "<f4", 1: "<f2"}[dtype]).tobytes()
    return struct.pack("<IIQQ", dtype, 0, len(values), len(data)) + data


@pytest.fixture
def files(lib, make_prompt, tmp_path):
    """A stored f32 prompt file and an AdamW checkpoint, both of 4 x 2 x 8, by the library."""
    p = make_prompt(4, 2, 8, 1, 7, KIND_XAVIER, 0)
    n = p.num_params()
    p.params()[:] = _random_params(n, np.random.default_rng(3))
    prompt = p.save(tmp_path / "p.ulpt", dtype=0, level=0)
    opts = OptimizerOptions(1, 2, 1e-3, 0.9, 0.999, 1e-8, 0.01, 0.0, 0.0, 2, 1, 10)
    ck = _checkpoint(lib, p, tmp_path / "c.ulpt", opts, 3, lambda s: np.full(n, 0.1, np.float32))
    f16 = p.save(tmp_path / "h.ulpt", dtype=1, level=0)
    return dict(prompt=prompt, ck=ck, f16=f16, n=n)


def _zlib_parm(count, data_len, fill=b"\x55"):
    return struct.pack("<IIQQ", 0, 1, count, data_len) + fill * data_len


# (row id, forge(files) -> bytes, load as a checkpoint?, documented code, message part)
ERROR_TABLE = [
    ("bad-magic", lambda f: b"\x88" + f["prompt"][1:], False, FORMAT, "magic"),
    ("part-of-magic", lambda f: f["prompt"][:7], False, CORRUPT, "truncated"),
    ("shorter-than-header", lambda f: f["prompt"][:27], False, CORRUPT, "truncated"),
    ("major-2", lambda f: with_header(f["prompt"], 8, "<H", 2), False, FORMAT, "2.0"),
    ("length-field", lambda f: f["prompt"] + b"\0", False, CORRUPT, "trailing"),
    ("crc", lambda f: f["prompt"][:60] + bytes([f["prompt"][60] ^ 4]) + f["prompt"][61:],
     False, CORRUPT, "checksum"),
    ("kind-3", lambda f: with_header(f["prompt"], 12, "<I", 3), False, FORMAT, "kind 3"),
    ("section-overrun", lambda f: with_header(f["prompt"], 24 + 8, "<Q", 1 << 40), False,
     CORRUPT, "claims"),
    ("65-sections", lambda f: rebuild(f["prompt"], sections_of(f["prompt"]) +
                                      [[b"X%03d" % i, 0, b""] for i in range(62)]),
     False, CORRUPT, "more than 64"),
    ("repeated-unknown-optional", lambda f: rebuild(
        f["prompt"], sections_of(f["prompt"]) + [[b"XTRA", 0, b"a"], [b"XTRA", 0, b"b"]]),
     False, CORRUPT, "'XTRA' appears twice"),
    ("repeated-known", lambda f: rebuild(f["prompt"], sections_of(f["prompt"]) +
                                         [[b"META", 0, meta_payload([])]]),
     False, CORRUPT, "appears twice"),
    ("unknown-required", lambda f: rebuild(f["prompt"], sections_of(f["prompt"]) +
                                           [[b"XTRA", 1, b""]]), False, FORMAT, "XTRA"),
    ("missing-shap", lambda f: rebuild(f["prompt"], [x for x in sections_of(f["prompt"])
                                                     if x[0] != b"SHAP"]),
     False, CORRUPT, "missing"),
    ("shap-40-bytes", lambda f: edit_section(f["prompt"], b"SHAP", lambda b: bytes(b[:40])),
     False, CORRUPT, "at least 48"),
    ("checkpoint-without-mom2", lambda f: rebuild(f["ck"], [x for x in sections_of(f["ck"])
                                                           if x[0] != b"MOM2"]),
     True, CORRUPT, "optimizer sections"),
    ("prompt-with-optm", lambda f: rebuild(f["prompt"], sections_of(f["prompt"]) +
                                           [x for x in sections_of(f["ck"]) if x[0] == b"OPTM"]),
     False, CORRUPT, "optimizer sections"),
    ("prompt-with-zost", lambda f: with_zost(f["prompt"]), False, CORRUPT,
     "forward-only section"),
    ("zost-short", lambda f: with_zost(f["ck"], size=39), True, CORRUPT,
     "forward-only section of 39 bytes"),
    ("zost-epsilon-0", lambda f: with_zost(f["ck"], epsilon=0.0), True, CORRUPT, "epsilon"),
    ("zost-directions-0", lambda f: with_zost(f["ck"], q=0, k=1), True, CORRUPT, "directions"),
    ("zost-batch-0", lambda f: with_zost(f["ck"], k=0), True, CORRUPT, "batch 0"),
    ("zost-batch-past-2q", lambda f: with_zost(f["ck"], k=5), True, CORRUPT, "batch"),
    ("zost-distribution-2", lambda f: with_zost(f["ck"], distribution=2), True, CORRUPT,
     "distribution"),
    ("zost-perturb-2", lambda f: with_zost(f["ck"], perturb=2), True, CORRUPT, "perturb"),
    ("reserved", lambda f: edit_field(f["prompt"], b"SHAP", SHAP_FMT, 8, 1), False, CORRUPT,
     "reserved"),
    ("checkpoint-load-of-a-prompt", lambda f: f["prompt"], True, FORMAT, "not a checkpoint"),
    ("param-count-field", lambda f: edit_field(f["prompt"], b"SHAP", SHAP_FMT, 9, 25), False,
     CORRUPT, "declares"),
    ("more-params-than-1032-per-byte", lambda f: with_shape(f["prompt"], n_tokens=1 << 20,
                                                            dim=1 << 20),
     False, CORRUPT, "cannot come from"),
    ("parm-20-bytes", lambda f: edit_section(f["prompt"], b"PARM", lambda b: bytes(b[:20])),
     False, CORRUPT, "too short"),
    ("parm-dtype-5", lambda f: edit_field(f["prompt"], b"PARM", "<IIQQ", 0, 5), False, FORMAT,
     "dtype 5"),
    ("parm-codec-7", lambda f: edit_field(f["prompt"], b"PARM", "<IIQQ", 1, 7), False, FORMAT,
     "codec 7"),
    ("parm-count", lambda f: edit_field(f["prompt"], b"PARM", "<IIQQ", 2, 23), False, CORRUPT,
     "elements declared"),
    ("parm-data-length-field", lambda f: edit_field(f["prompt"], b"PARM", "<IIQQ", 3, 95),
     False, CORRUPT, "data bytes declared"),
    ("parm-stored-short", lambda f: edit_section(
        f["prompt"], b"PARM", lambda b: struct.pack("<IIQQ", 0, 0, f["n"], 4 * f["n"] - 4) +
        bytes(b[24:-4])), False, CORRUPT, "cannot hold"),
    ("checkpoint-parm-f16", lambda f: rebuild(f["ck"], [
        x if x[0] != b"PARM" else [b"PARM", 1, dict((t, pl) for t, _, pl in
                                                    split_sections(f["f16"]))[b"PARM"]]
        for x in sections_of(f["ck"])]), True, FORMAT, "must be f32"),
    ("memory-bound", lambda f: edit_section(with_shape(f["prompt"], n_tokens=4, dim=1 << 22),
                                            b"PARM", lambda b: _zlib_parm(8 + 2 * (1 << 22),
                                                                          33000)),
     False, CORRUPT, "impossible for"),
    ("meta-count-1025", lambda f: edit_section(f["prompt"], b"META",
                                               lambda b: struct.pack("<I", 1025)),
     False, CORRUPT, "1024"),
    ("meta-nul", lambda f: with_meta(f["prompt"], [(b"k", b"a\0b")]), False, CORRUPT, "bad value"),
    ("meta-stray-bytes", lambda f: edit_section(f["prompt"], b"META",
                                                lambda b: meta_payload([]) + b"x"),
     False, CORRUPT, "stray"),
    ("meta-repeated-key", lambda f: with_meta(f["prompt"], [(b"k", b"1"), (b"k", b"2")]),
     False, CORRUPT, "twice"),
    ("meta-overlong-utf8", lambda f: with_meta(f["prompt"], [(b"k", b"\xc0\x80")]), False,
     CORRUPT, "not UTF-8"),
    ("meta-surrogate", lambda f: with_meta(f["prompt"], [(b"k", b"\xed\xa0\x80")]), False,
     CORRUPT, "not UTF-8"),
    ("meta-past-10ffff", lambda f: with_meta(f["prompt"], [(b"\xf4\x90\x80\x80", b"v")]), False,
     CORRUPT, "key that is not UTF-8"),
    ("meta-cut-short", lambda f: with_meta(f["prompt"], [(b"k", b"\xe2\x82")]), False, CORRUPT,
     "not UTF-8"),
    ("meta-lone-continuation", lambda f: with_meta(f["prompt"], [(b"k", b"a\x80")]), False,
     CORRUPT, "not UTF-8"),
    # (each keeps the parameter count of 24, so that only the shape's validity fails)
    ("shape-rank-over-dim", lambda f: with_shape(f["prompt"], n_tokens=1, rank=22, dim=1),
     False, CORRUPT, "bad shape"),
    ("shape-identity-rank", lambda f: with_shape(f["prompt"], kind=KIND_IDENTITY, fp=0), False,
     CORRUPT, "bad shape"),
    ("shape-groups", lambda f: with_shape(f["prompt"], n_groups=3), False, CORRUPT, "bad shape"),
    ("shape-zero-tokens", lambda f: with_shape(f["prompt"], n_tokens=0, dim=12), False,
     CORRUPT, "bad shape"),
    ("shape-kind-9", lambda f: with_shape(f["prompt"], kind=9), False, CORRUPT, "bad shape"),
    ("shape-flag-bit-2", lambda f: with_shape(f["prompt"], flags=4), False, CORRUPT,
     "bad shape"),
    ("fingerprint", lambda f: with_shape(f["prompt"], seed=8), False, MISMATCH, "fingerprint"),
    ("zlib-garbage", lambda f: edit_section(f["prompt"], b"PARM",
                                            lambda b: _zlib_parm(f["n"], 20)),
     False, CORRUPT, "inflate"),
    ("nan-parameter", lambda f: edit_section(
        f["prompt"], b"PARM", lambda b: stored_tensor([np.nan] + [0.5] * (f["n"] - 1))),
     False, CORRUPT, "not finite"),
    ("optm-80-bytes", lambda f: edit_section(f["ck"], b"OPTM", lambda b: bytes(b[:80])), True,
     CORRUPT, "at least 88"),
    ("optm-weight-decay", lambda f: edit_field(f["ck"], b"OPTM", OPTM_FMT, 6, -1.0), True,
     CORRUPT, "weight decay"),
    ("optm-steps", lambda f: edit_field(f["ck"], b"OPTM", OPTM_FMT, 11, (1 << 53) + 1), True,
     CORRUPT, "step count"),
    ("optm-kind-3", lambda f: edit_field(f["ck"], b"OPTM", OPTM_FMT, 0, 3), True, CORRUPT,
     "optimizer kind"),
    ("optm-schedule-3", lambda f: edit_field(f["ck"], b"OPTM", OPTM_FMT, 1, 3), True, CORRUPT,
     "schedule"),
    ("optm-lr-0", lambda f: edit_field(f["ck"], b"OPTM", OPTM_FMT, 2, 0.0), True, CORRUPT, "lr"),
    ("optm-beta1-1", lambda f: edit_field(f["ck"], b"OPTM", OPTM_FMT, 3, 1.0), True, CORRUPT,
     "betas"),
    ("optm-beta2-negative", lambda f: edit_field(f["ck"], b"OPTM", OPTM_FMT, 4, -0.1), True,
     CORRUPT, "betas"),
    ("optm-eps-0", lambda f: edit_field(f["ck"], b"OPTM", OPTM_FMT, 5, 0.0), True, CORRUPT,
     "eps"),
    ("optm-momentum-1", lambda f: edit_field(f["ck"], b"OPTM", OPTM_FMT, 7, 1.0), True,
     CORRUPT, "momentum"),
    ("optm-clip-inf", lambda f: edit_field(f["ck"], b"OPTM", OPTM_FMT, 8, math.inf), True,
     CORRUPT, "max_grad_norm"),
    ("optm-total-not-past-warmup", lambda f: edit_field(f["ck"], b"OPTM", OPTM_FMT, 10, 1),
     True, CORRUPT, "total_steps"),
    ("mom1-f16", lambda f: edit_section(f["ck"], b"MOM1",
                                        lambda b: stored_tensor([0.0] * f["n"], dtype=1)),
     True, FORMAT, "moments must be f32"),
    ("mom1-nan", lambda f: edit_section(f["ck"], b"MOM1",
                                        lambda b: stored_tensor([np.nan] * f["n"])),
     True, CORRUPT, "not finite"),
    ("mom2-negative", lambda f: edit_section(f["ck"], b"MOM2",
                                             lambda b: stored_tensor([-1.0] * f["n"])),
     True, CORRUPT, "negative"),
]

# rows whose rule the decoder above does not implement (semantic checks of the library;
# the memory bound's sum is computed from FORMAT.md in test_memory_bound_* below)
LIBRARY_ONLY = {"memory-bound", "shape-rank-over-dim", "shape-identity-rank", "shape-groups",
                "shape-zero-tokens", "shape-kind-9", "shape-flag-bit-2", "nan-parameter",
                "optm-weight-decay", "optm-steps", "optm-kind-3", "optm-schedule-3", "optm-lr-0",
                "optm-beta1-1", "optm-beta2-negative", "optm-eps-0", "optm-momentum-1",
                "optm-clip-inf", "optm-total-not-past-warmup", "mom1-nan", "mom2-negative",
                "checkpoint-load-of-a-prompt", "more-params-than-1032-per-byte",
                "zost-epsilon-0", "zost-directions-0", "zost-batch-0", "zost-batch-past-2q",
                "zost-distribution-2", "zost-perturb-2"}


@pytest.mark.parametrize("row", ERROR_TABLE, ids=[r[0] for r in ERROR_TABLE])
def test_each_check_gives_its_documented_error(lib, files, tmp_path, row):
    name, forge, checkpoint, code, words = row
    blob = forge(files)
    rc, msg = lib_load(lib, blob, checkpoint, tmp_path)
    assert rc == code, f"{name}: rc {rc}, documented {code} ({msg})"
    assert words in msg, f"{name}: message {msg!r} does not say {words!r}"
    if name not in LIBRARY_ONLY:
        with pytest.raises(FormatError):
            decode_file(blob)


def test_the_untouched_files_load(lib, files, tmp_path):
    assert lib_load(lib, files["prompt"], False, tmp_path) == (OK, "")
    assert lib_load(lib, files["ck"], True, tmp_path) == (OK, "")
    decode_file(files["prompt"]), decode_file(files["ck"])


def test_sections_grow_only_at_their_end_and_readers_ignore_the_extra(lib, files, tmp_path):
    """A later minor version may append fields to SHAP and OPTM: the first bytes are read,
    the rest ignored; the prompt and the optimizer state load unchanged."""
    longer = edit_section(files["prompt"], b"SHAP", lambda b: bytes(b) + b"\x01" * 8)
    assert lib_load(lib, longer, False, tmp_path) == (OK, "")
    assert decode_file(longer)["shape"] == decode_file(files["prompt"])["shape"]
    longer = edit_section(files["ck"], b"OPTM", lambda b: bytes(b) + b"\xff" * 8)
    assert lib_load(lib, longer, True, tmp_path) == (OK, "")
    assert decode_file(longer)["optm"] == decode_file(files["ck"])["optm"]


def test_64_sections_load_and_a_checkpoint_prompt_is_read_by_prompt_readers(lib, files, tmp_path):
    many = rebuild(files["prompt"], sections_of(files["prompt"]) +
                   [[b"X%03d" % i, 0, b"x"] for i in range(61)])
    assert len(split_sections(many)) == 64
    assert lib_load(lib, many, False, tmp_path) == (OK, "")
    assert len(decode_file(many)["unknown"]) == 61
    # a prompt reader takes the prompt of a checkpoint, but not one with an f16 PARM
    assert lib_load(lib, files["ck"], False, tmp_path) == (OK, "")
    f16 = dict((t, pl) for t, _, pl in split_sections(files["f16"]))[b"PARM"]
    bad = rebuild(files["ck"], [x if x[0] != b"PARM" else [b"PARM", 1, f16]
                                for x in sections_of(files["ck"])])
    assert lib_load(lib, bad, False, tmp_path)[0] == FORMAT


def test_zlib_bound_is_exact_in_integers(lib, files, tmp_path):
    """count*e <= 1032*D + 64: at the bound the data is let through to zlib (which then
    finds it is not a stream); one element byte past it, refused before inflating."""
    D = 2
    at_bound = 1032 * D + 64  # count*4 for f32: pick a shape whose count*4 is near it
    # n_tokens * rank + 2 * dim elements; rank 1, dim 1 -> n + 2 elements of 4 bytes
    for count_bytes, words in ((at_bound, "inflate"), (at_bound + 4, "cannot hold")):
        count = count_bytes // 4
        blob = edit_section(with_shape(files["prompt"], n_tokens=count - 2, rank=1, dim=1,
                                       kind=KIND_IDENTITY, fp=0),
                            b"PARM", lambda b: _zlib_parm(count, D))
        rc, msg = lib_load(lib, blob, False, tmp_path)
        assert rc == CORRUPT and words in msg, (count_bytes, msg)
    assert (1032 * D + 64) % 4 == 0


def test_metadata_must_be_utf8_when_set(make_prompt, lib):
    p = make_prompt(4, 2, 8)
    for bad in (b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"a\x80", b"\xff"):
        assert lib.ulpt_prompt_set_meta(p.h, b"k", bad) == INVALID, bad
        assert b"not UTF-8" in lib.ulpt_last_error()
        assert lib.ulpt_prompt_set_meta(p.h, bad, b"v") == INVALID, bad
    for good in ("é", "€", "𝄞", "\U0010ffff", "\ud7ff", "\ue000", ""):
        assert lib.ulpt_prompt_set_meta(p.h, b"k", good.encode()) == OK, good


def test_new_prompt_starts_with_unit_scale_and_zero_shift(make_prompt):
    """PROJECTION.md section 2: Z from its stream, every s exactly 1, every b exactly 0."""
    p = make_prompt(5, 2, 6, 1, 9, KIND_XAVIER, 0, init_seed=1, init_std=0.5)
    x = p.params()
    z = np.array(normal_draws(1, 2, 0, 10, float(np.float32(0.5))), dtype=np.float32)
    assert x[:10].tolist() == z.tolist()
    assert x[10:16].tolist() == [1.0] * 6 and x[16:22].tolist() == [0.0] * 6
    q = make_prompt(5, 2, 6, 1, 9, KIND_XAVIER, 1, init_seed=1, init_std=0.5)  # no scale
    assert q.num_params() == 16 and q.params()[10:].tolist() == [0.0] * 6


# --------------------------------------------------------------------------------------
# FORMAT.md, check 5: the memory bound, computed from its table alone
# --------------------------------------------------------------------------------------

HANDLE = 512
FLOOR = 64 << 20


def fused_area(r, d):
    """F, in floats: the fused kernels' area (0 past rank 16)."""
    if r > 16:
        return 0
    w = min(d, 4096 if r <= 2 else 512 if r <= 4 else 256 if r <= 8 else 128)
    t = w if w <= 512 else -(-w // 512) * 512
    return (2 * r + 1) * t + 1024


def memory_bound(n, r, d, g, kind, flags, L, m, load="prompt", q=0, k=0):
    """The bytes FORMAT.md's table sums for a load, in exact integers."""
    g = g or 1
    P = expected_n_params(n, r, d, flags)
    if kind == KIND_IDENTITY:
        S, proj = 0, HANDLE
    else:
        S = (n // g) * (r + 1) + (r + 1) * d + max(r * d, fused_area(r, d) - (r + 1) * d)
        proj = HANDLE + 4 * r * d
    prompt = HANDLE + 8 * g + 4 * (2 * P + S) + g * proj

    def work(e):
        return 4 * ((e + 1) * n * d + P) + 64

    total = L + prompt + (4 * P + 65536) + (2 * m + 24576)
    if load in ("checkpoint", "zo"):
        total += HANDLE + 8 * P + work(1)
    if load == "zo":
        total += HANDLE + 8 * P + 16 * q + work(max(k, 1))
    return total


def _lib_load_any(lib, blob, load, tmp_path):
    """(rc, message) of loading blob as a prompt (buffer), a checkpoint or a forward-only
    checkpoint (files)."""
    if load != "zo":
        return lib_load(lib, blob, load == "checkpoint", tmp_path)
    p, o, z = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    path = tmp_path / "forged-zo.ulpt"
    path.write_bytes(blob)
    f = lib.ulpt_zo_checkpoint_load
    f.restype, f.argtypes = ctypes.c_int, [ctypes.POINTER(ctypes.c_void_p)] * 3 + [ctypes.c_char_p]
    rc = f(ctypes.byref(p), ctypes.byref(o), ctypes.byref(z), str(path).encode())
    msg = lib.ulpt_last_error().decode("utf-8", "replace") if rc else ""
    if z:
        lib.ulpt_zo_free(ctypes.c_void_p(z.value))
    if o:
        lib.ulpt_optimizer_free(o)
    if p:
        lib.ulpt_prompt_free(p)
    return rc, msg


def _forged_shape(files, load, n, r, d, g, kind, flags, q, k):
    """A file of this shape whose PARM is the shortest zlib payload the shape's count
    passes check 4 with (its bytes are not a stream: a load that passes check 5 then
    fails to inflate), and its (L, m)."""
    base = files["prompt"] if load == "prompt" else files["ck"]
    if load == "zo":
        base = with_zost(base, q=q, k=k)
    count = expected_n_params(n, r, d, flags)
    data = max(1, -(-(4 * count - 64) // 1032))
    blob = edit_section(with_shape(base, n_tokens=n, rank=r, dim=d, n_groups=g, kind=kind,
                                   flags=flags), b"PARM", lambda b: _zlib_parm(count, data))
    meta = dict((t, pl) for t, _, pl in split_sections(blob)).get(b"META", b"")
    return blob, len(blob), len(meta)


# (rank, dim, n_groups, kind, flags, load, q, k): fused ranks where F is longer than the
# GEMM scratch (small or odd dim), the GEMM ranks, groups, flags, the identity, and the
# three loaders
BOUND_CASES = [
    (1, 600, 1, KIND_XAVIER, 0, "prompt", 0, 0),
    (2, 4096, 1, KIND_XAVIER, 0, "prompt", 0, 0),
    (2, 5000, 4, KIND_RADEMACHER, 0, "prompt", 0, 0),
    (3, 100, 1, KIND_GAUSSIAN, 1, "prompt", 0, 0),
    (4, 700, 2, KIND_XAVIER, 0, "checkpoint", 0, 0),
    (5, 64, 1, KIND_KAIMING, 2, "prompt", 0, 0),
    (8, 300, 1, KIND_XAVIER, 3, "checkpoint", 0, 0),
    (9, 20, 1, KIND_XAVIER, 0, "prompt", 0, 0),
    (16, 1000, 8, KIND_XAVIER, 0, "prompt", 0, 0),
    (17, 1000, 1, KIND_XAVIER, 0, "prompt", 0, 0),
    (64, 2048, 2, KIND_GAUSSIAN, 0, "checkpoint", 0, 0),
    (24, 24, 1, KIND_IDENTITY, 0, "prompt", 0, 0),
    (2, 768, 1, KIND_XAVIER, 0, "zo", 4, 8),
    (1, 300, 1, KIND_XAVIER, 0, "zo", 1 << 12, 1),
]


@pytest.mark.parametrize("case", BOUND_CASES, ids=[
    f"r{c[0]}-d{c[1]}-g{c[2]}-k{c[3]}-f{c[4]}-{c[5]}" for c in BOUND_CASES])
def test_memory_bound_is_the_documented_sum(lib, files, tmp_path, case):
    """The shape where FORMAT.md's sum first passes 64 MiB (searched over n_tokens with
    the table above, nothing from the library): one group fewer, check 5 lets the file
    through (to fail at the fingerprint or the inflation); at it, the load is refused with exactly the
    documented number of bytes."""
    r, d, g, kind, flags, load, q, k = case

    def bound(n):
        _, L, m = _forged_shape(files, load, n, r, d, g, kind, flags, q, k)
        return memory_bound(n, r, d, g, kind, flags, L, m, load, q, k)

    lo, hi = 1, 1
    while bound(hi * g) <= FLOOR:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # bound(lo * g) <= FLOOR < bound(hi * g)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if bound(mid * g) <= FLOOR else (lo, mid)
    for n, refused in ((lo * g, False), (hi * g, True)):
        blob, L, m = _forged_shape(files, load, n, r, d, g, kind, flags, q, k)
        assert 1032 * L < FLOOR  # the floor is the limit here
        want = memory_bound(n, r, d, g, kind, flags, L, m, load, q, k)
        rc, msg = _lib_load_any(lib, blob, load, tmp_path)
        if refused:
            assert rc == CORRUPT and f"needs {want} bytes" in msg, (n, want, msg)
        else:  # past checks 5 and 6: the fingerprint (check 7) or the inflation fails
            assert (rc, "fingerprint") == (MISMATCH, "fingerprint") and "fingerprint" in msg \
                or rc == CORRUPT and "inflate" in msg, (n, want, msg)


_ALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_REALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


class _Allocator(ctypes.Structure):
    _fields_ = [("alloc", _ALLOC), ("realloc", _REALLOC), ("free", _FREE),
                ("user", ctypes.c_void_p)]


class CountingAllocator:
    """The C library's malloc behind ulpt_set_allocator, counting the bytes live and
    their peak."""

    def __init__(self, lib):
        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.realloc.restype = ctypes.c_void_p
        libc.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
        self.lib, self.live, self.now, self.peak = lib, {}, 0, 0

        def alloc(_, size):
            ptr = libc.malloc(size)
            if ptr:
                self._take(ptr, size)
            return ptr

        def realloc(_, old, size):
            ptr = libc.realloc(old, size)
            if ptr:
                self._give(old)
                self._take(ptr, size)
            return ptr

        def free(_, ptr):
            self._give(ptr)
            libc.free(ptr)

        self.c = _Allocator(_ALLOC(alloc), _REALLOC(realloc), _FREE(free), None)

    def _take(self, ptr, size):
        self.live[ptr] = size
        self.now += size
        self.peak = max(self.peak, self.now)

    def _give(self, ptr):
        if ptr:
            self.now -= self.live.pop(ptr)

    def __enter__(self):
        f = self.lib.ulpt_set_allocator
        f.restype, f.argtypes = ctypes.c_int, [ctypes.c_void_p]
        assert f(ctypes.byref(self.c)) == 0
        return self

    def __exit__(self, *exc):
        assert self.lib.ulpt_set_allocator(None) == 0


# (n_tokens, rank, dim, n_groups, kind, flags, save level, load)
REAL_LOADS = [
    (4, 2, 8, 1, KIND_XAVIER, 0, 0, "prompt"),
    (100, 2, 4096, 1, KIND_XAVIER, 0, 9, "prompt"),
    (64, 1, 600, 4, KIND_RADEMACHER, 1, 0, "prompt"),
    (30, 3, 100, 3, KIND_GAUSSIAN, 2, 6, "checkpoint"),
    (20, 8, 300, 1, KIND_XAVIER, 3, 0, "checkpoint"),
    (12, 16, 1000, 4, KIND_KAIMING, 0, 1, "prompt"),
    (10, 20, 64, 1, KIND_XAVIER, 0, 0, "checkpoint"),
    (6, 24, 24, 1, KIND_IDENTITY, 0, 9, "prompt"),
    (50, 2, 768, 1, KIND_XAVIER, 0, 0, "zo"),
    (8, 4, 512, 2, KIND_XAVIER, 0, 9, "zo"),
]


@pytest.mark.parametrize("case", REAL_LOADS, ids=[
    f"n{c[0]}-r{c[1]}-d{c[2]}-g{c[3]}-k{c[4]}-f{c[5]}-z{c[6]}-{c[7]}" for c in REAL_LOADS])
def test_memory_bound_covers_what_a_load_allocates(lib, make_prompt, tmp_path, case):
    """Files the library wrote, loaded through a counting allocator: the most the load
    held at once never exceeds FORMAT.md's sum, and it falls short of it by no more than
    the sum's allowances (the handles, zlib, the metadata, the inflated tensor, which a
    stored tensor does not need, the file, which a buffer load does not read)."""
    n, r, d, g, kind, flags, level, load = case
    p = make_prompt(n, r, d, g, 11, kind, flags)
    rng = np.random.default_rng(n * 131 + r)
    p.params()[:] = _random_params(p.num_params(), rng, compressible=level > 0)
    p.set_meta("model", "m" * 40)
    p.set_meta("task", "bound")
    path = tmp_path / "real.ulpt"
    if load == "prompt":
        blob = p.save(path, dtype=0, level=level)
    else:
        opts = OptimizerOptions(1, 2, 1e-3, 0.9, 0.999, 1e-8, 0.01, 0.0, 0.0, 0, 0, 0)
        blob = _checkpoint(lib, p, path, opts, 2,
                           lambda s: np.full(p.num_params(), 0.1, np.float32))
        if load == "zo":
            blob = with_zost(blob, q=3, k=5)
    meta = dict((t, pl) for t, _, pl in split_sections(blob))[b"META"]
    q, k = (3, 5) if load == "zo" else (0, 0)
    want = memory_bound(n, r, d, g, kind, flags, len(blob), len(meta), load, q, k)
    with CountingAllocator(lib) as counter:
        rc, msg = _lib_load_any(lib, blob, load, tmp_path)
        assert (rc, msg) == (OK, "")
        assert counter.now == 0  # everything freed again
    P = expected_n_params(n, r, d, flags)
    allowances = (HANDLE * (g + 3) + 65536 + 2 * len(meta) + 24576 + 4 * P + len(blob) + 64)
    assert counter.peak <= want, (counter.peak, want)
    assert want - counter.peak <= allowances, (counter.peak, want, allowances)
