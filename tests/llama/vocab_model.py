"""Small random Llama-architecture models around the real vocabularies llama.cpp ships
(models/ggml-vocab-*.gguf: a tokenizer, no weights), and an independent numpy forward of
the same model in float64.

write_model() copies every tokenizer key of the vocabulary file (tokens, scores, types,
merges, special ids, BOS/EOS rules, chat template) into a new GGUF with random weights,
written with the gguf-py package of the pinned llama.cpp source, of architecture `llama`
or one of ARCHS.  Forward.logits() is the reference: RMSNorm, rotary position embeddings,
grouped-query causal attention, SwiGLU, untied or tied output head; per architecture:
  llama    rotating consecutive pairs (llama.cpp's LLAMA_ROPE_TYPE_NORM), no biases;
  qwen2    rotating the two halves of a head (LLAMA_ROPE_TYPE_NEOX), biases on q, k, v;
  qwen2vl  qwen2 with multi-section rotary positions (LLAMA_ROPE_TYPE_MROPE): text has the
           same position in every section, which makes it qwen2's rotation;
  qwen3vl  no biases, RMSNorm of each query and key head, interleaved sections
           (LLAMA_ROPE_TYPE_IMROPE) of which text has position 0 in the fourth (pairs
           that fall there are not rotated), and one deepstack layer: llama.cpp's input
           rows are twice n_embd wide, a token's embedding padded with zeros."""
import os
import sys

import numpy as np

EPS = 1e-5
ROPE_BASE = 10000.0
ARCHS = ("llama", "qwen2", "qwen2vl", "qwen3vl")


def load_gguf_py(llama_src):
    sys.path.insert(0, os.path.join(llama_src, "gguf-py"))
    import gguf  # noqa: E402
    return gguf


def tokenizer_fields(gguf, vocab_path):
    """(key, value, GGUFValueType, sub type) of every tokenizer.* key of vocab_path."""
    r = gguf.GGUFReader(vocab_path)
    out = []
    for key, f in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        out.append((key, f.contents(), vtype, sub))
    return out


def write_model(gguf, vocab_path, out_path, *, name="random-llama", n_embd=64, n_layer=2,
                n_head=4, n_head_kv=2, n_ff=96, ctx=256, tied=True, seed=0, arch="llama"):
    """Writes the model; returns its weights (numpy, float32) and hyperparameters."""
    if arch not in ARCHS:
        raise ValueError("architecture %r: one of %s" % (arch, ", ".join(ARCHS)))
    fields = tokenizer_fields(gguf, vocab_path)
    n_vocab = len(next(v for k, v, _, _ in fields if k == "tokenizer.ggml.tokens"))
    rng = np.random.default_rng(seed)
    hd = n_embd // n_head

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"token_embd.weight": (0.5 * rng.standard_normal((n_vocab, n_embd))).astype(np.float32)}
    for i in range(n_layer):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = norm(n_embd)
        w[p + "attn_q.weight"] = mat(n_head * hd, n_embd)
        w[p + "attn_k.weight"] = mat(n_head_kv * hd, n_embd)
        w[p + "attn_v.weight"] = mat(n_head_kv * hd, n_embd)
        if arch in ("qwen2", "qwen2vl"):
            for t, n in (("q", n_head), ("k", n_head_kv), ("v", n_head_kv)):
                w[p + f"attn_{t}.bias"] = (0.5 * rng.standard_normal(n * hd)).astype(np.float32)
        if arch == "qwen3vl":
            w[p + "attn_q_norm.weight"] = norm(hd)
            w[p + "attn_k_norm.weight"] = norm(hd)
        w[p + "attn_output.weight"] = mat(n_embd, n_head * hd)
        w[p + "ffn_norm.weight"] = norm(n_embd)
        w[p + "ffn_gate.weight"] = mat(n_ff, n_embd)
        w[p + "ffn_up.weight"] = mat(n_ff, n_embd)
        w[p + "ffn_down.weight"] = mat(n_embd, n_ff)
    w["output_norm.weight"] = norm(n_embd)
    if not tied:
        w["output.weight"] = mat(n_vocab, n_embd)

    tmp = out_path + ".part"
    writer = gguf.GGUFWriter(tmp, arch)
    writer.add_name(name)
    writer.add_context_length(ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(EPS)
    writer.add_rope_dimension_count(hd)
    writer.add_rope_freq_base(ROPE_BASE)
    if arch == "qwen2vl":  # sections of rotated pairs, hd / 2 of them in all
        third = hd // 2 // 3
        writer.add_rope_dimension_sections([hd // 2 - 2 * third, third, third, 0])
    sections = [hd // 2 // 3] * 3 + [hd // 2 - 3 * (hd // 2 // 3)]  # qwen3vl: [2, 2, 2, 2]
    if arch == "qwen3vl":
        writer.add_rope_dimension_sections(sections)
        writer.add_uint32(f"{arch}.n_deepstack_layers", 1)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key, value, vtype, sub in fields:
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for k, v in w.items():
        writer.add_tensor(k, v)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out_path)
    hp = dict(n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff,
              n_vocab=n_vocab, tied=tied, arch=arch, sections=sections,
              rope={"llama": "norm", "qwen3vl": "imrope"}.get(arch, "neox"),
              # the pinned llama.cpp does not read qwen2vl's RMSNorm epsilon key and runs
              # with 0 (its log says f_norm_rms_eps = 0.0e+00): the reference does the same
              eps=0.0 if arch == "qwen2vl" else EPS)
    return w, hp


class Forward:
    """The model in float64 numpy: logits of every position of a sequence of input rows."""

    def __init__(self, w, hp):
        self.w = {k: v.astype(np.float64) for k, v in w.items()}
        self.hp = hp

    def embed(self, ids):
        return self.w["token_embd.weight"][np.asarray(ids, dtype=np.int64)]

    def rms(self, x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.hp["eps"]) * g

    def rope(self, x):
        """x: (n, heads, hd); pair i rotated by pos * base^(-2i/hd), the pair being
        (2i, 2i+1) ("norm") or (i, i + hd/2) ("neox", "imrope"); "imrope": a pair of the
        fourth section, where text's position is 0, not rotated (ggml's sector rule)."""
        n, _, hd = x.shape
        theta = ROPE_BASE ** (-np.arange(0, hd, 2) / hd)
        if self.hp["rope"] == "imrope":
            s0, s1, s2, s3 = self.hp["sections"]
            sector = np.arange(hd // 2) % (s0 + s1 + s2 + s3)
            e = [not ((i % 3 == 1 and i < 3 * s1) or (i % 3 == 2 and i < 3 * s2) or
                      (i % 3 == 0 and i < 3 * s0)) for i in sector]
            theta = np.where(e, 0.0, theta)
        ang = np.arange(n)[:, None] * theta[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        first, second = (np.s_[..., 0::2], np.s_[..., 1::2]) if self.hp["rope"] == "norm" \
            else (np.s_[..., :hd // 2], np.s_[..., hd // 2:])
        a, b = x[first], x[second]
        out = np.empty_like(x)
        out[first] = a * c - b * s
        out[second] = a * s + b * c
        return out

    def proj(self, h, p, t):
        """h @ W^T (+ bias): the q, k or v projection of layer prefix p."""
        y = h @ self.w[p + f"attn_{t}.weight"].T
        b = self.w.get(p + f"attn_{t}.bias")
        return y if b is None else y + b

    def logits(self, rows):
        w, hp = self.w, self.hp
        x = np.asarray(rows, dtype=np.float64)
        n = x.shape[0]
        H, KV = hp["n_head"], hp["n_head_kv"]
        hd = hp["n_embd"] // H
        mask = np.triu(np.full((n, n), -np.inf), 1)
        for i in range(hp["n_layer"]):
            p = f"blk.{i}."
            h = self.rms(x, w[p + "attn_norm.weight"])
            q = self.proj(h, p, "q").reshape(n, H, hd)
            k = self.proj(h, p, "k").reshape(n, KV, hd)
            if p + "attn_q_norm.weight" in w:  # each head normalised on its own
                q = self.rms(q, w[p + "attn_q_norm.weight"])
                k = self.rms(k, w[p + "attn_k_norm.weight"])
            q, k = self.rope(q), self.rope(k)
            v = self.proj(h, p, "v").reshape(n, KV, hd)
            heads = []
            for j in range(H):
                kv = j // (H // KV)
                a = q[:, j, :] @ k[:, kv, :].T / np.sqrt(hd) + mask
                a = np.exp(a - a.max(axis=1, keepdims=True))
                a /= a.sum(axis=1, keepdims=True)
                heads.append(a @ v[:, kv, :])
            x = x + np.concatenate(heads, axis=1) @ w[p + "attn_output.weight"].T
            h = self.rms(x, w[p + "ffn_norm.weight"])
            g = h @ w[p + "ffn_gate.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "ffn_up.weight"].T)) @ \
                w[p + "ffn_down.weight"].T
        x = self.rms(x, w["output_norm.weight"])
        head = w["token_embd.weight"] if hp["tied"] else w["output.weight"]
        return x @ head.T

    def label_scores(self, prefix_rows, label_ids):
        """Summed log-probabilities of each label's tokens after prefix_rows."""
        out = []
        for ids in label_ids:
            rows = np.concatenate([prefix_rows, self.embed(ids[:-1])]) if len(ids) > 1 \
                else prefix_rows
            lg = self.logits(rows)
            top = lg.max(axis=1, keepdims=True)
            lp = lg - top - np.log(np.exp(lg - top).sum(axis=1, keepdims=True))
            n0 = prefix_rows.shape[0] - 1
            out.append(sum(lp[n0 + k, t] for k, t in enumerate(ids)))
        return np.array(out)


def read_vectors(vocab_path):
    """llama.cpp's tokenizer test vectors: [(text, [ids])] from .inp and .out."""
    with open(vocab_path + ".inp", encoding="utf-8", newline="") as f:
        inp = f.read().split("\n__ggml_vocab_test__\n")
    with open(vocab_path + ".out", encoding="utf-8", newline="") as f:
        out = f.read().split("\n")
    for v in (inp, out):  # as llama.cpp's test reads them: no empty piece after the last
        if v and v[-1] == "":
            v.pop()
    assert len(inp) == len(out), vocab_path
    return [(t, [int(x) for x in o.split()]) for t, o in zip(inp, out)]


def tokenizer_bos(vocab_path):
    """The BOS id of a vocabulary file (read with gguf-py, which load_gguf_py imported)."""
    import gguf  # noqa: E402
    f = gguf.GGUFReader(vocab_path).fields["tokenizer.ggml.bos_token_id"]
    return int(f.contents())
