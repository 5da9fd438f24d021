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

Weights live in a .tlm file of version 2 (docs/TINYLM.md, read and written by
llama_format.py): tinylm's container (magic, little-endian header, zlib-compressed float32
parameters, CRC-32) with an architecture field and the extra configuration.
`random_llama(cfg, seed)` builds an initial model of any configuration, and `write_gguf`
writes a model as a GGUF file llama.cpp loads.
"""

import math

import numpy as np
import torch
from torch import nn

from llama_format import (LlamaConfig, read_llama, split_flat, write_gguf_arrays,  # noqa: F401
                          write_llama)


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
    """Write a model as a version-2 .tlm file."""
    flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in model.file_order()])
    write_llama(model.cfg, flat.numpy(), path, seed, steps, corpus)


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


def write_gguf(model, path, gguf, name="tinylm-llama-random", description="", f16=False):
    """Write a PyTorch model (pretrained or from random_llama) as a `llama` GGUF file."""
    named = {n: p.detach().float().cpu().numpy() for n, p in model.named_parameters()}
    write_gguf_arrays(model.cfg, named, path, gguf, name, description, f16)
