"""tinylm-llama in PyTorch: a byte-level model of Llama's shape, the reference for its GGUF
conversion (architecture `llama`) and for every engine that runs it (docs/TINYLM.md,
"The Llama-shaped model").

Like tinylm (tinylm_torch.py), the forward pass takes input *rows* (n x C embeddings), so
soft-prompt rows can be prepended to embedded text:

    model, meta = load_llama("tinylm-llama.tlm")
    e = torch.cat([prompt_rows, embed_bytes(model, b"some text\\n")])
    logits = model(e)                              # n x V

The shape is llama.cpp's `llama` architecture, term for term:
  - RMSNorm, x / sqrt(mean(x^2) + eps) * w, before attention, before the MLP, at the end;
  - rotary position embeddings on queries and keys, rotating *adjacent* pairs
    (x[2i], x[2i+1]) by pos * base^(-2i/D): llama.cpp's LLAMA_ROPE_TYPE_NORM.  The weights
    are trained in that convention, so the GGUF holds wq and wk unpermuted (Hugging Face
    checkpoints rotate halves instead, which is why llama.cpp's converter permutes them);
  - grouped-query attention: H query heads share KVH key/value heads, query head h
    reading key/value head h // (H / KVH); scores scaled by 1/sqrt(D), causal;
  - a SwiGLU MLP, down(silu(gate(x)) * up(x));
  - no biases; an untied output head (`output`), or the token embeddings when tied.
Positions count from 0 at the first input row.  Matrices are stored [in x out] and applied
as x @ W, as in tinylm.

Weights live in a .tlm file of version 2 (docs/TINYLM.md): tinylm's container (magic,
little-endian header, zlib-compressed float32 parameters, CRC-32) with an architecture
field and the extra configuration.  `random_llama(cfg, seed)` builds an initial model of
any configuration and `write_gguf` writes a model as a GGUF file llama.cpp loads.
"""

import math
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

MAGIC = b"\x89TLM\r\n\x1a\n"
VERSION = 2
ARCH_LLAMA = 1
FLAG_TIED = 1
# magic, version, arch, V C L H KVH F T flags, rope base, norm eps, P, seed, steps, corpus, Z
HEADER = struct.Struct("<8s2I8I2f3Q64sQ")
assert HEADER.size == 152


@dataclass(frozen=True)
class LlamaConfig:
    V: int = 256      # vocabulary (bytes)
    C: int = 256      # width
    L: int = 2        # blocks
    H: int = 8        # query heads
    KVH: int = 2      # key/value heads
    F: int = 768      # MLP hidden size
    T: int = 192      # maximum sequence length
    rope_base: float = 10000.0
    eps: float = 1e-5
    tied: bool = False

    @property
    def D(self):
        return self.C // self.H

    def check(self):
        if min(self.V, self.C, self.L, self.H, self.KVH, self.F, self.T) <= 0:
            return "a size is not positive"
        if self.C % self.H:
            return "width %d is not divisible by %d heads" % (self.C, self.H)
        if self.H % self.KVH:
            return "%d query heads are not divisible by %d key/value heads" % (self.H, self.KVH)
        if self.D % 2:
            return "head size %d is odd (rotary pairs)" % self.D
        if not (self.rope_base > 0 and self.eps > 0):
            return "rope base and norm eps must be positive"
        return None

    def shapes(self):
        """(name, shape) of every parameter, in file order."""
        V, C, F, KV = self.V, self.C, self.F, self.KVH * self.D
        out = [("tok_emb", (V, C))]
        for l in range(self.L):
            p = "blocks.%d." % l
            out += [(p + "attn_norm", (C,)), (p + "wq", (C, C)), (p + "wk", (C, KV)),
                    (p + "wv", (C, KV)), (p + "wo", (C, C)), (p + "ffn_norm", (C,)),
                    (p + "w_gate", (C, F)), (p + "w_up", (C, F)), (p + "w_down", (F, C))]
        out.append(("norm", (C,)))
        if not self.tied:
            out.append(("output", (C, V)))
        return out

    def param_count(self):
        return sum(math.prod(s) for _, s in self.shapes())


def rms_norm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, base):
    """Rotate adjacent pairs of x (..., n, D) by position (0..n-1) times base^(-2i/D)."""
    n, D = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


class LlamaBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, F, KV = cfg.C, cfg.F, cfg.KVH * cfg.D
        self.cfg = cfg
        self.attn_norm = nn.Parameter(torch.ones(C))
        self.wq = nn.Parameter(torch.zeros(C, C))
        self.wk = nn.Parameter(torch.zeros(C, KV))
        self.wv = nn.Parameter(torch.zeros(C, KV))
        self.wo = nn.Parameter(torch.zeros(C, C))
        self.ffn_norm = nn.Parameter(torch.ones(C))
        self.w_gate = nn.Parameter(torch.zeros(C, F))
        self.w_up = nn.Parameter(torch.zeros(C, F))
        self.w_down = nn.Parameter(torch.zeros(F, C))

    def forward(self, x):
        cfg = self.cfg
        n, D = x.shape[-2], cfg.D
        a = rms_norm(x, self.attn_norm, cfg.eps)
        heads = lambda z, h: z.unflatten(-1, (h, D)).transpose(-3, -2)  # (..., h, n, D)
        q = rope(heads(a @ self.wq, cfg.H), cfg.rope_base)
        k = rope(heads(a @ self.wk, cfg.KVH), cfg.rope_base)
        v = heads(a @ self.wv, cfg.KVH)
        group = cfg.H // cfg.KVH
        k = k.repeat_interleave(group, dim=-3)  # query head h reads kv head h // group
        v = v.repeat_interleave(group, dim=-3)
        s = q @ k.transpose(-1, -2) / math.sqrt(D)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        p = s.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (p @ v).transpose(-3, -2).flatten(-2)                           # (..., n, C)
        x = x + y @ self.wo
        m = rms_norm(x, self.ffn_norm, cfg.eps)
        return x + (nn.functional.silu(m @ self.w_gate) * (m @ self.w_up)) @ self.w_down


class TinyLlama(nn.Module):
    def __init__(self, cfg=LlamaConfig()):
        super().__init__()
        why = cfg.check()
        if why:
            raise ValueError("tinylm-llama: bad configuration (%s): %r" % (why, cfg))
        self.cfg = cfg
        self.tok_emb = nn.Parameter(torch.zeros(cfg.V, cfg.C))
        self.blocks = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.L))
        self.norm = nn.Parameter(torch.ones(cfg.C))
        self.output = None if cfg.tied else nn.Parameter(torch.zeros(cfg.C, cfg.V))

    def file_order(self):
        """The parameters in .tlm file order (LlamaConfig.shapes)."""
        named = dict(self.named_parameters())
        return [named[name] for name, _ in self.cfg.shapes()]

    @property
    def wte(self):
        """The token embeddings, under tinylm's name, so code written for tinylm's
        `model.wte[x]` reads this model too."""
        return self.tok_emb

    def head(self):
        """The output head as a [C x V] matrix."""
        return self.tok_emb.T if self.cfg.tied else self.output

    def forward(self, e):
        """Input rows e (n x C, n <= T; leading batch dims allowed) -> logits (n x V)."""
        n = e.shape[-2]
        if not 1 <= n <= self.cfg.T:
            raise ValueError("tinylm-llama: %d rows; 1 to %d allowed" % (n, self.cfg.T))
        x = e
        for blk in self.blocks:
            x = blk(x)
        return rms_norm(x, self.norm, self.cfg.eps) @ self.head()


def random_llama(cfg=LlamaConfig(), seed=1):
    """An initial model: matrices N(0, 0.02) from a generator seeded with `seed` (file
    order), norm weights 1.  What pretraining starts from, and a test model of any shape."""
    model = TinyLlama(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.file_order():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            else:
                p.fill_(1.0)
    return model


def embed_bytes(model, data):
    """The input rows of a byte string: tok_emb[b] for each byte b (n x C)."""
    return model.tok_emb[torch.tensor(list(bytes(data)), dtype=torch.long)]


def save_llama(model, path, seed, steps, corpus):
    cfg = model.cfg
    name = corpus.encode("utf-8") if isinstance(corpus, str) else bytes(corpus)
    if len(name) > 64:
        raise ValueError("tinylm-llama: corpus name longer than 64 bytes")
    flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in model.file_order()])
    z = zlib.compress(flat.numpy().astype("<f4").tobytes())
    head = HEADER.pack(MAGIC, VERSION, ARCH_LLAMA, cfg.V, cfg.C, cfg.L, cfg.H, cfg.KVH,
                       cfg.F, cfg.T, FLAG_TIED if cfg.tied else 0, cfg.rope_base, cfg.eps,
                       cfg.param_count(), seed, steps, name, len(z))
    body = head + z
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(body + struct.pack("<I", zlib.crc32(body)))
    os.replace(tmp, path)


def read_llama(path):
    """(cfg, meta, float32 parameters) of a version-2 .tlm file, with every check of
    docs/TINYLM.md; ValueError with a one-line message when it is refused.  NumPy only."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER.size + 4:
        raise ValueError("%s: truncated (%d bytes, header is %d)" % (path, len(data), HEADER.size))
    (magic, version, arch, V, C, L, H, KVH, F, T, flags, base, eps, P, seed, steps, name,
     Z) = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("%s: not a .tlm file (bad magic)" % path)
    if version != VERSION:
        raise ValueError("%s: .tlm version %d, a Llama-shaped model is version %d"
                         % (path, version, VERSION))
    if arch != ARCH_LLAMA:
        raise ValueError("%s: unknown architecture %d" % (path, arch))
    if flags & ~FLAG_TIED:
        raise ValueError("%s: unknown flags 0x%x" % (path, flags))
    cfg = LlamaConfig(V, C, L, H, KVH, F, T, float(base), float(eps), bool(flags & FLAG_TIED))
    why = cfg.check()
    if why:
        raise ValueError("%s: bad configuration (%s)" % (path, why))
    if P != cfg.param_count():
        raise ValueError("%s: parameter count %d, configuration implies %d"
                         % (path, P, cfg.param_count()))
    if len(data) != HEADER.size + Z + 4:
        raise ValueError("%s: %d bytes, the header says %d" % (path, len(data), HEADER.size + Z + 4))
    end = HEADER.size + Z
    if zlib.crc32(data[:end]) != struct.unpack_from("<I", data, end)[0]:
        raise ValueError("%s: bad CRC-32" % path)
    try:
        d = zlib.decompressobj()
        raw = d.decompress(data[HEADER.size:end], 4 * P + 1)
        ok = d.eof and not d.unused_data and len(raw) == 4 * P
    except zlib.error:
        ok = False
    if not ok:
        raise ValueError("%s: zlib data does not inflate to %d bytes" % (path, 4 * P))
    meta = dict(seed=seed, steps=steps, param_count=P,
                corpus=name.split(b"\0", 1)[0].decode("utf-8", "replace"))
    return cfg, meta, np.frombuffer(raw, dtype="<f4").astype(np.float32)


def load_llama(path):
    """(model, meta) from a version-2 .tlm file."""
    cfg, meta, flat = read_llama(path)
    model = TinyLlama(cfg)
    flat = torch.from_numpy(flat)
    with torch.no_grad():
        off = 0
        for p in model.file_order():
            p.copy_(flat[off:off + p.numel()].view(p.shape))
            off += p.numel()
    return model, meta


def gguf_tensors(cfg, named):
    """(GGUF name, array) pairs for llama.cpp's `llama` architecture, from parameters by
    .tlm name.  GGUF stores a matrix applied as y = W x as [out, in] (NumPy order), so the
    [in x out] matrices are transposed; wq and wk go unpermuted (adjacent-pair RoPE)."""
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    out = [("token_embd.weight", f32(named["tok_emb"]))]
    for l in range(cfg.L):
        s, p = "blocks.%d." % l, "blk.%d." % l
        out += [(p + "attn_norm.weight", f32(named[s + "attn_norm"])),
                (p + "attn_q.weight", f32(named[s + "wq"].T)),
                (p + "attn_k.weight", f32(named[s + "wk"].T)),
                (p + "attn_v.weight", f32(named[s + "wv"].T)),
                (p + "attn_output.weight", f32(named[s + "wo"].T)),
                (p + "ffn_norm.weight", f32(named[s + "ffn_norm"])),
                (p + "ffn_gate.weight", f32(named[s + "w_gate"].T)),
                (p + "ffn_up.weight", f32(named[s + "w_up"].T)),
                (p + "ffn_down.weight", f32(named[s + "w_down"].T))]
    out.append(("output_norm.weight", f32(named["norm"])))
    if not cfg.tied:
        out.append(("output.weight", f32(named["output"].T)))
    return out


def split_flat(cfg, flat):
    """Parameters by .tlm name from the flat float32 array of a file."""
    named, at = {}, 0
    for name, shape in cfg.shapes():
        n = math.prod(shape)
        named[name] = flat[at:at + n].reshape(shape)
        at += n
    assert at == flat.size
    return named


def byte_spellings():
    """GPT-2's byte-level table (as examples/llama/convert.py spells tinylm's vocabulary):
    printable bytes stand for themselves, the others are shifted to code points from
    U+0100 on, so every byte is one visible character."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    spell, shift = [], 0
    for b in range(256):
        if b in keep:
            spell.append(chr(b))
        else:
            spell.append(chr(256 + shift))
            shift += 1
    return spell


def write_gguf_arrays(cfg, named, path, gguf, name, description="", f16=False):
    """Write a GGUF file of architecture `llama` with the byte vocabulary.  `gguf` is the
    module from llama.cpp's gguf-py; `named` maps .tlm names to NumPy arrays.  With f16,
    matrices are stored as float16 (norm weights stay float32, as llama.cpp expects).
    Written beside `path` and renamed over it, so a failure leaves no half file."""
    if cfg.V != 256:
        raise ValueError("tinylm-llama: vocabulary of %d, a byte-level model has 256" % cfg.V)
    tmp = path + ".tmp"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(name)
    if description:
        w.add_description(description)
    w.add_context_length(cfg.T)
    w.add_embedding_length(cfg.C)
    w.add_feed_forward_length(cfg.F)
    w.add_block_count(cfg.L)
    w.add_head_count(cfg.H)
    w.add_head_count_kv(cfg.KVH)
    w.add_rope_dimension_count(cfg.D)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_layer_norm_rms_eps(cfg.eps)
    w.add_vocab_size(cfg.V)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    # The byte vocabulary exactly as tinylm's GGUF has it: token id b is byte b, no merges
    # (one empty rule, which never applies, because llama.cpp needs the key), no BOS/EOS
    # added; hosts map bytes to ids themselves.
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(byte_spellings())
    w.add_token_types([gguf.TokenType.NORMAL] * 256)
    w.add_token_merges([""])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    for tname, a in gguf_tensors(cfg, named):
        if f16 and a.ndim == 2:
            a = a.astype(np.float16)
        w.add_tensor(tname, a)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_gguf(model, path, gguf, name="tinylm-llama-random", description="", f16=False):
    """Write a PyTorch model (pretrained or from random_llama) as a `llama` GGUF file."""
    named = {n: p.detach().float().cpu().numpy() for n, p in model.named_parameters()}
    write_gguf_arrays(model.cfg, named, path, gguf, name, description, f16)
