"""tinylm-llama in llama.cpp (make check-llama): the GGUF convert.py writes, run by the
pinned llama.cpp as architecture `llama`, against the PyTorch reference
(examples/tinylm/llama_torch.py), on the shipped weights and on random weights of several
shapes, for rows given as embeddings (a prompt) and as tokens.

llama.cpp is found beside ULPT_LLAMA_GGUF (the Makefile's cache directory: its llama.cpp
source with gguf-py and the headers, and build/bin with the libraries), or at
ULPT_LLAMA_DIR.  tests/llama/llama_logits.c is compiled against it once per session."""
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "examples", "tinylm"))
import llama_format as lf  # noqa: E402
import llama_torch as lt  # noqa: E402

SHIPPED = os.path.join(ROOT, "examples", "tinylm", "tinylm-llama.tlm")
CONVERT = os.path.join(ROOT, "examples", "llama", "convert.py")
GGUF = os.environ.get("ULPT_LLAMA_GGUF")
LLAMA_DIR = os.environ.get("ULPT_LLAMA_DIR") or (os.path.dirname(GGUF) if GGUF else None)

pytestmark = pytest.mark.skipif(not LLAMA_DIR, reason="run through `make check-llama`")

# float32 throughout on both sides; what is left is the order of float sums
TOL_REL = 2e-5

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(path of the compiled llama_logits, the gguf module)."""
    src = os.path.join(LLAMA_DIR, "llama.cpp")
    lib = os.path.join(LLAMA_DIR, "build", "bin")
    out = str(tmp_path_factory.mktemp("bin") / "llama_logits")
    cc = os.environ.get("CC", "cc")
    r = subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
                        "-I" + os.path.join(src, "include"),
                        "-I" + os.path.join(src, "ggml", "include"),
                        os.path.join(HERE, "llama_logits.c"), "-o", out, "-L" + lib,
                        "-lllama", "-lggml", "-lggml-base", "-Wl,-rpath," + lib],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sys.path.insert(0, os.path.join(src, "gguf-py"))
    import gguf
    return out, gguf


def llama_logits(tool, gguf_path, rows, tokens, tmp_path, mode="exact"):
    """llama.cpp's logits for embedding rows (k x d) then tokens: (k + n) x V."""
    rows = np.ascontiguousarray(rows, dtype="<f4")
    k, d = rows.shape
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    with open(inp, "wb") as f:
        f.write(struct.pack("<3i", k, len(tokens), d))
        f.write(rows.tobytes())
        f.write(np.asarray(tokens, dtype="<i4").tobytes())
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))
    r = subprocess.run([tool, gguf_path, str(inp), str(out), mode], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return np.fromfile(out, dtype="<f4").reshape(k + len(tokens), -1)


def compare(model, tool, gguf_path, tmp_path, text, n_rows, seed, mode="exact"):
    """max |difference| and max |difference| / max |logit| over every position, for
    n_rows random embedding rows then the bytes of text."""
    g = torch.Generator().manual_seed(seed)
    scale = model.tok_emb.detach().std()
    rows = torch.randn(n_rows, model.cfg.C, generator=g) * scale
    with torch.no_grad():
        e = torch.cat([rows, lt.embed_bytes(model, text)])
        want = model(e).numpy()
    got = llama_logits(tool, gguf_path, rows.numpy(), list(text), tmp_path, mode)
    assert got.shape == want.shape
    diff = np.abs(got - want).max()
    return diff, diff / np.abs(want).max()


TEXT = b"Call me Ishmael. Some years ago--never mind how long precisely--having \
little or no money in my purse, and nothing particular to interest me on shore"


@pytest.fixture(scope="module")
def shipped(llama, tmp_path_factory):
    tool, gguf = llama
    path = str(tmp_path_factory.mktemp("shipped") / "tinylm-llama.gguf")
    r = subprocess.run([sys.executable, CONVERT, SHIPPED, path, "--gguf-py",
                        os.path.join(LLAMA_DIR, "llama.cpp", "gguf-py")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "llama, " in r.stdout and 'model "tinylm-llama"' in r.stdout
    model, _ = lt.load_llama(SHIPPED)
    return model, path


def test_converted_file_is_llama_with_the_byte_vocabulary(llama, shipped):
    _, gguf = llama
    model, path = shipped
    reader = gguf.GGUFReader(path)
    field = lambda k: reader.fields[k]
    arch = bytes(field("general.architecture").parts[-1]).decode()
    assert arch == "llama"
    assert int(field("llama.attention.head_count_kv").parts[-1][0]) == model.cfg.KVH
    assert int(field("llama.attention.head_count").parts[-1][0]) == model.cfg.H
    assert len(field("tokenizer.ggml.tokens").data) == 256
    names = {t.name: t for t in reader.tensors}
    assert "output.weight" in names and "blk.0.attn_k.weight" in names
    # every matrix's rows are whole 256-element super-blocks (ggml's k-quants)
    for t in reader.tensors:
        if len(t.shape) == 2:
            assert int(t.shape[0]) % 256 == 0, t.name


def test_shipped_weights_agree_with_pytorch(llama, shipped, tmp_path):
    tool, _ = llama
    model, path = shipped
    worst = 0.0
    for n_rows, text, seed in [(0, TEXT, 1), (16, TEXT[:80], 2), (8, b"Rosabella\n", 3)]:
        diff, rel = compare(model, tool, path, tmp_path, text, n_rows, seed)
        print("shipped: %d rows + %d bytes: max |dlogit| %.3g (relative %.3g)"
              % (n_rows, len(text), diff, rel))
        worst = max(worst, rel)
    assert worst < TOL_REL


@pytest.mark.parametrize("cfg,seed", [
    (lf.LlamaConfig(), 3),                                        # the shipped shape
    (lf.LlamaConfig(L=3, H=4, KVH=1, F=512, rope_base=500.0), 4),  # one key/value head
    (lf.LlamaConfig(L=1, H=8, KVH=8, F=256, tied=True), 5),       # no grouping, tied head
])
def test_random_weights_agree_with_pytorch(llama, tmp_path, cfg, seed):
    tool, gguf = llama
    model = lt.random_llama(cfg, seed=seed)
    with torch.no_grad():  # norm weights away from 1 and larger matrices, so every
        g = torch.Generator().manual_seed(seed)  # term moves the logits
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.mul_(4)
    path = str(tmp_path / "random.gguf")
    lt.write_gguf(model, path, gguf)
    diff, rel = compare(model, tool, path, tmp_path, TEXT[:100], 12, seed)
    print("random %r: max |dlogit| %.3g (relative %.3g)" % (cfg, diff, rel))
    assert rel < TOL_REL


def test_a_wrong_rope_convention_would_be_seen(llama, tmp_path):
    # The check can fail: with wq and wk permuted as for a model that rotates halves,
    # llama.cpp's logits leave PyTorch's far behind.
    tool, gguf = llama
    cfg = lf.LlamaConfig(L=1)
    model = lt.random_llama(cfg, seed=6)
    with torch.no_grad():
        model.blocks[0].wq.mul_(8)
        model.blocks[0].wk.mul_(8)
    named = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    D = cfg.D
    halves = np.concatenate([np.arange(0, D, 2), np.arange(1, D, 2)])
    for name, heads in (("blocks.0.wq", cfg.H), ("blocks.0.wk", cfg.KVH)):
        w = named[name]
        named[name] = np.concatenate([w[:, h * D:(h + 1) * D][:, halves] for h in range(heads)],
                                     axis=1)
    path = str(tmp_path / "permuted.gguf")
    lf.write_gguf_arrays(cfg, named, path, gguf, "tinylm-llama-random")
    _, rel = compare(model, tool, path, tmp_path, TEXT[:60], 4, 6)
    assert rel > 100 * TOL_REL


def test_f16_file_is_close_and_llama_cpp_defaults_are_measured(llama, shipped, tmp_path):
    # Not the reference comparison: float16 weights, or llama.cpp's default float16 KV
    # cache, move the logits by about 1e-3 of their scale.  Printed for docs/TINYLM.md.
    tool, gguf = llama
    model, path = shipped
    f16 = str(tmp_path / "f16.gguf")
    r = subprocess.run([sys.executable, CONVERT, SHIPPED, f16, "--f16", "--gguf-py",
                        os.path.join(LLAMA_DIR, "llama.cpp", "gguf-py")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(f16) < 0.6 * os.path.getsize(path)
    _, rel16 = compare(model, tool, f16, tmp_path, TEXT, 8, 7)
    _, reldef = compare(model, tool, path, tmp_path, TEXT, 8, 7, mode="default")
    print("f16 weights: relative %.3g; float16 KV cache (llama.cpp defaults): relative %.3g"
          % (rel16, reldef))
    assert TOL_REL / 100 < rel16 < 1e-2
    assert reldef < 1e-2


def test_convert_refuses_what_it_cannot_write(tmp_path):
    bad = tmp_path / "bad.tlm"
    data = bytearray(open(SHIPPED, "rb").read())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    out = tmp_path / "x.gguf"
    r = subprocess.run([sys.executable, CONVERT, str(bad), str(out), "--gguf-py",
                        os.path.join(LLAMA_DIR, "llama.cpp", "gguf-py")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "bad CRC-32" in r.stderr
    assert not out.exists() and not (tmp_path / "x.gguf.tmp").exists()
    r = subprocess.run([sys.executable, CONVERT, SHIPPED, str(out), "--gelu-zero",
                        "--gguf-py", os.path.join(LLAMA_DIR, "llama.cpp", "gguf-py")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no GELU" in r.stderr
    assert not out.exists()
