"""llama_embd_grad, the gradient the project's llama.cpp patch adds, against PyTorch
autograd: tinylm-llama's shape (examples/tinylm/llama_torch.py) with random weights, as a
float32 GGUF and quantized by llama.cpp's own llama_model_quantize; the reference runs in
float64 on the weights the GGUF holds (dequantized by gguf-py).  Also: the error for a graph
ggml cannot differentiate (tinylm as gpt2: NORM, GELU), for repacked weights, and for
batches that do not fit.

ULPT_LLAMA_GRAD names the driver tests/llama/llama_grad, ULPT_LLAMA_SRC the patched
llama.cpp tree (for gguf-py) and ULPT_LLAMA_GGUF tinylm as gpt2 (the Makefile sets them).
Run with -s to see the measured errors."""
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "examples", "tinylm"))
import llama_torch as lt  # noqa: E402

DRIVER = os.environ.get("ULPT_LLAMA_GRAD")
SRC = os.environ.get("ULPT_LLAMA_SRC")
GPT2 = os.environ.get("ULPT_LLAMA_GGUF")

pytestmark = pytest.mark.skipif(not DRIVER or not SRC or not GPT2,
                                reason="run through `make check-llama`")
if SRC:
    sys.path.insert(0, os.path.join(SRC, "gguf-py"))

CFG = lt.LlamaConfig(V=256, C=256, L=2, H=8, KVH=2, F=768, T=64)
STATUS = {"invalid": -1, "no_fit": -2, "unsupported": -3}


def run(*args, timeout=600):
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))
    return subprocess.run([DRIVER, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


class Seq:
    """A sequence: tokens (-1 where a row comes from embd), embd rows, targets."""

    def __init__(self, tokens, embd, targets):
        self.tokens = list(tokens)
        self.embd = np.asarray(embd, dtype=np.float32).reshape(-1, CFG.C)
        self.targets = list(targets)  # (position, token)
        assert self.tokens.count(-1) == len(self.embd)


def write_request(path, seqs, cand):
    with open(path, "wb") as f:
        f.write(struct.pack("<2i", len(seqs), len(cand)))
        f.write(np.asarray(cand, dtype="<i4").tobytes())
        for s in seqs:
            f.write(struct.pack("<i", len(s.tokens)))
            f.write(np.asarray(s.tokens, dtype="<i4").tobytes())
            f.write(struct.pack("<i", len(s.embd)))
            f.write(s.embd.astype("<f4").tobytes())
            f.write(struct.pack("<i", len(s.targets)))
            f.write(np.asarray([p for p, _ in s.targets], dtype="<i4").tobytes())
            f.write(np.asarray([t for _, t in s.targets], dtype="<i4").tobytes())


def llama_grad(gguf, seqs, cand, tmp, *opts):
    """(losses, gradients, seconds per call) from llama.cpp, or the failed process."""
    req, out = os.path.join(tmp, "req.bin"), os.path.join(tmp, "out.bin")
    write_request(req, seqs, cand)
    r = run(gguf, req, out, *opts)
    if r.returncode != 0:
        return r
    data = open(out, "rb").read()
    at, losses, grads = 0, [], []
    for s in seqs:
        losses.append(struct.unpack_from("<d", data, at)[0])
        at += 8
        n = len(s.embd) * CFG.C
        grads.append(np.frombuffer(data, "<f4", n, at).reshape(-1, CFG.C))
        at += 4 * n
    secs = struct.unpack_from("<d", data, at)[0]
    assert at + 8 == len(data)
    return losses, grads, secs


def torch_model(gguf_path):
    """TinyLlama in float64 with the weights a GGUF holds (dequantized)."""
    import gguf
    reader = gguf.GGUFReader(gguf_path)
    w = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
         for t in reader.tensors}
    model = lt.TinyLlama(CFG).double()
    named = dict(model.named_parameters())
    mats = {"attn_q": "wq", "attn_k": "wk", "attn_v": "wv", "attn_output": "wo",
            "ffn_gate": "w_gate", "ffn_up": "w_up", "ffn_down": "w_down"}
    with torch.no_grad():
        named["tok_emb"].copy_(torch.from_numpy(w["token_embd.weight"]))
        named["norm"].copy_(torch.from_numpy(w["output_norm.weight"]))
        named["output"].copy_(torch.from_numpy(w["output.weight"].T))
        for l in range(CFG.L):
            b, p = "blocks.%d." % l, "blk.%d." % l
            named[b + "attn_norm"].copy_(torch.from_numpy(w[p + "attn_norm.weight"]))
            named[b + "ffn_norm"].copy_(torch.from_numpy(w[p + "ffn_norm.weight"]))
            for g, t in mats.items():
                named[b + t].copy_(torch.from_numpy(w[p + g + ".weight"].T))
    return model


def reference(model, seqs, cand):
    """(losses, gradients) by autograd in float64."""
    losses, grads = [], []
    for s in seqs:
        E = torch.tensor(s.embd, dtype=torch.float64, requires_grad=True)
        rows, k = [], 0
        for t in s.tokens:
            if t < 0:
                rows.append(E[k])
                k += 1
            else:
                rows.append(model.tok_emb[t])
        logits = model(torch.stack(rows))
        pos = torch.tensor([p for p, _ in s.targets])
        if cand:
            y = torch.tensor([cand.index(t) for _, t in s.targets])
            sel = logits[pos][:, torch.tensor(cand)]
        else:
            y = torch.tensor([t for _, t in s.targets])
            sel = logits[pos]
        loss = torch.nn.functional.cross_entropy(sel, y, reduction="sum")
        loss.backward()
        losses.append(loss.item())
        grads.append(E.grad.numpy() if len(s.embd) else np.zeros((0, CFG.C)))
    return losses, grads


def worst(got, want):
    """A batch's largest relative errors: per sequence max |g - w| / max |w| over the
    gradient, and |loss - want| / |want|."""
    g_err = max(float(np.abs(g - w).max()) / float(np.abs(w).max())
                for g, w in zip(got[1], want[1]) if w.size)
    l_err = max(abs(a - b) / abs(b) for a, b in zip(got[0], want[0]))
    return g_err, l_err


def text(s):
    return list(s.encode())


def batches(rng):
    """Several prompts and batches: prompt rows first, after a token, in the middle, alone;
    one and several sequences, of equal and different lengths; whole vocabulary and a
    two-token verbalizer."""
    E = lambda n: rng.standard_normal((n, CFG.C)) * 0.5
    one = [Seq([-1] * 6 + text("the cat sat on a mat"), E(6),
               [(21, ord("t")), (24, ord("a")), (25, ord("t"))])]
    mixed = [Seq([ord("\n")] + [-1] * 4 + text("good film\n"), E(4), [(14, ord("p"))]),
             Seq([-1] * 8 + text("a long review of a film that was bad\n"), E(8),
                 [(44, ord("n")), (20, ord("p")), (9, ord("n"))]),
             Seq([-1, -1], E(2), [(1, ord("p"))])]
    equal = [Seq([-1] * 5 + text("text %d here\n" % i), E(5), [(16, ord("n") if i % 2 else ord("p"))])
             for i in range(4)]
    middle = [Seq(text("abcdefghij") + [-1] * 16 + text("0123456789" * 3 + "klmnopqrstuvwxyz")[:38],
                  E(16), [(63, ord("x")), (40, ord("k")), (12, ord("a")), (30, ord("2"))])]
    return [("one sequence", one, [], ()),
            ("three sequences, verbalizer", mixed, [ord("p"), ord("n")], ()),
            ("four equal sequences, a KV stream each", equal, [ord("p"), ord("n")], ("--split",)),
            ("rows in the middle, full context", middle, [], ())]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The float32 GGUF and its quantizations."""
    import gguf
    d = tmp_path_factory.mktemp("grad")
    model = lt.random_llama(CFG, seed=7)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)  # std 0.08: attention far from uniform, logits of a few units
    paths = {"f32": str(d / "f32.gguf")}
    lt.write_gguf(model, paths["f32"], gguf, name="tinylm-llama-grad-test")
    for q in ("f16", "q8_0", "q4_k_m", "q4_0"):
        paths[q] = str(d / (q + ".gguf"))
        r = run("--quantize", paths["f32"], paths[q], q)
        assert r.returncode == 0, r.stderr
    return d, paths


def compare(models, kind):
    d, paths = models
    ref = torch_model(paths[kind])
    rng = np.random.default_rng(3)
    out = []
    for name, seqs, cand, opts in batches(rng):
        got = llama_grad(paths[kind], seqs, cand, str(d), *opts)
        assert isinstance(got, tuple), got.stderr
        g_err, l_err = worst(got[:2], reference(ref, seqs, cand))
        out.append((name, g_err, l_err))
        print("%-6s %-42s gradient %.2e  loss %.2e" % (kind, name, g_err, l_err))
    return out


def test_float32_gradient_equals_pytorch_autograd(models):
    for name, g_err, l_err in compare(models, "f32"):
        assert g_err <= 1e-4, name
        assert l_err <= 1e-5, name


@pytest.mark.parametrize("kind,bound", [("f16", 2e-2), ("q8_0", 5e-2), ("q4_k_m", 2e-1),
                                        ("q4_0", 2e-1)])
def test_reduced_precision_gradient_against_pytorch_on_its_weights(models, kind, bound):
    # llama.cpp multiplies these weights with activations rounded to float16 or 8 bits
    # (the matrix product's vec_dot_type), PyTorch with float64 ones: that is the difference
    for name, g_err, l_err in compare(models, kind):
        assert g_err <= bound, (name, g_err)
        assert l_err <= bound, (name, l_err)


def test_a_graph_without_backward_is_named_not_aborted(models, tmp_path):
    # tinylm as gpt2: layer norm and GELU, which ggml_compute_backward has no case for
    seqs = [Seq([-1] * 2 + text("hi"), np.zeros((2, CFG.C)), [(3, ord("a"))])]
    seqs[0].embd = np.zeros((2, 128), dtype=np.float32)  # tinylm's width
    req, out = str(tmp_path / "r.bin"), str(tmp_path / "o.bin")
    write_request(req, seqs, [])
    r = run(GPT2, req, out)
    assert r.returncode == 3, r.stderr
    assert "status %d:" % STATUS["unsupported"] in r.stderr, r.stderr
    assert "cannot differentiate" in r.stderr and "NORM" in r.stderr and "GELU" in r.stderr
    assert not os.path.exists(out)


def test_repacked_weights_are_refused_with_the_way_out(models):
    d, paths = models
    seqs = [Seq([-1] * 2 + text("hi"), np.ones((2, CFG.C)), [(3, ord("a"))])]
    r = llama_grad(paths["q4_0"], seqs, [], str(d), "--extra-bufts")
    if isinstance(r, tuple):
        # no repacking for this CPU: then the result must be the unrepacked one
        assert r[:2] == llama_grad(paths["q4_0"], seqs, [], str(d))[:2]
        return
    assert r.returncode == 3
    assert "status %d:" % STATUS["unsupported"] in r.stderr
    assert "use_extra_bufts = false" in r.stderr, r.stderr


def test_bad_batches_get_their_status(models):
    d, paths = models
    ok = Seq([-1] * 3 + text("abc"), np.ones((3, CFG.C)), [(5, ord("d"))])
    # more rows than one ubatch
    r = llama_grad(paths["f32"], [ok, ok], [], str(d), "--ubatch", "8")
    assert r.returncode == 3 and "status %d:" % STATUS["no_fit"] in r.stderr, r.stderr
    assert "n_ubatch" in r.stderr
    # a target outside the sequence, a repeated target row, a target outside the classes
    for targets, cand, what in (([(6, 1)], [], "target_pos"), ([(5, 1), (5, 2)], [], "repeated"),
                                ([(5, ord("z"))], [ord("p"), ord("n")], "not one of cand")):
        bad = Seq(ok.tokens, ok.embd, targets)
        r = llama_grad(paths["f32"], [bad], cand, str(d))
        assert r.returncode == 3 and "status %d:" % STATUS["invalid"] in r.stderr, r.stderr
        assert what in r.stderr
    # different lengths in streams of their own cannot be one ubatch
    longer = Seq([-1] * 3 + text("abcdefgh"), np.ones((3, CFG.C)), [(5, ord("d"))])
    r = llama_grad(paths["f32"], [ok, longer], [], str(d), "--split")
    assert r.returncode == 3 and "status %d:" % STATUS["no_fit"] in r.stderr, r.stderr
    # a NaN in a prompt row
    nan = Seq(ok.tokens, np.full((3, CFG.C), np.nan), ok.targets)
    r = llama_grad(paths["f32"], [nan], [], str(d))
    assert r.returncode == 3 and "NaN" in r.stderr


def tune(gguf, tmp, *opts):
    import json
    host = os.environ.get("ULPT_LLAMA_HOST", os.path.join(ROOT, "examples", "llama", "ulpt-llama"))
    r = np.random.default_rng(5)
    for split, n in (("train", 64), ("test", 16)):
        with open(os.path.join(tmp, split + ".jsonl"), "w") as f:
            for _ in range(n):
                y = int(r.integers(2))
                f.write(json.dumps({"text": "it was " + ("good" if y else "bad"),
                                    "label": ("yes", "no")[y]}) + "\n")
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    return subprocess.run([host, "tune", "--gguf", gguf, "--train", os.path.join(tmp, "train.jsonl"),
                           "--test", os.path.join(tmp, "test.jsonl"), "--steps", "3",
                           "--threads", "2", *opts], capture_output=True, text=True,
                          timeout=600, env=env)


def test_tune_is_first_order_on_a_llama_graph_and_says_why_not_on_gpt2(models, tmp_path):
    import json
    _, paths = models
    for kind in ("f32", "q4_0"):
        r = tune(paths[kind], str(tmp_path), "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["method"] == "first-order", r.stdout
        assert np.isfinite(out["loss_last"]) and out["sequences"] == 3 * 16 * 2
    r = tune(GPT2, str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "not first-order: the model's graph holds what ggml cannot differentiate: NORM" \
        in r.stdout, r.stdout
    assert "forward-only" in r.stdout


def test_tune_json_says_why_not_first_order_and_method_is_honoured(models, tmp_path):
    import json
    _, paths = models
    r = tune(paths["f32"], str(tmp_path), "--json")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["method"] == "first-order" and out["not_first_order"] == "", r.stdout
    assert out["max_rss_kib"] > 1024
    r = tune(paths["f32"], str(tmp_path), "--json", "--method", "forward-only")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["method"] == "forward-only" and out["not_first_order"] == "", r.stdout
    assert out["sequences"] == 3 * 16 * 2  # two perturbed prompts of 16 examples a step
    r = tune(GPT2, str(tmp_path), "--json")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["method"] == "forward-only"
    assert "NORM (norm-0), GELU (ffn_gelu-0)" in out["not_first_order"], r.stdout
