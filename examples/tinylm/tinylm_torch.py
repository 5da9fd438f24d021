"""tinylm in PyTorch: the reference for examples/tinylm/tinylm.c, written from docs/TINYLM.md.

A byte-level causal transformer whose forward pass takes input *rows* (n x C embeddings), so
soft-prompt rows can be prepended to the embedded text:

    model, meta = load_tlm("model.tlm")
    e = torch.cat([prompt_rows, embed_bytes(model, b"some text\\n")])
    logits = model(e)                              # n x V
    loss = verbalizer_loss(logits, b"01", label)   # gradient flows back to prompt_rows

Parameters carry the spec's names (`wte`, `wpe`, `blocks[l].qkv_w`, ..., `lnf_b`); matrices
are stored [in x out] and applied as x @ W + b. `save_tlm` / `load_tlm` read and write the
`.tlm` weights format (little-endian header, zlib-compressed float32 parameters, CRC-32).
"""

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

MAGIC = b"\x89TLM\r\n\x1a\n"
VERSION = 1
HEADER = struct.Struct("<8s8I3Q64sQ")  # magic, version, V C L H F T, reserved, P, seed, steps, corpus, Z
assert HEADER.size == 136


@dataclass(frozen=True)
class Config:
    V: int = 256  # vocabulary (bytes)
    C: int = 128  # width
    L: int = 4    # blocks
    H: int = 4    # heads
    F: int = 512  # MLP hidden size
    T: int = 192  # maximum sequence length

    def param_count(self):
        V, C, L, F, T = self.V, self.C, self.L, self.F, self.T
        block = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * F + F) + (F * C + C)
        return V * C + T * C + L * block + 2 * C


def layer_norm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased
    return (x - mu) / torch.sqrt(var + 1e-5) * w + b


def gelu(z):
    return 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))


class Block(nn.Module):
    NAMES = ["ln1_w", "ln1_b", "qkv_w", "qkv_b", "proj_w", "proj_b",
             "ln2_w", "ln2_b", "fc_w", "fc_b", "fcproj_w", "fcproj_b"]  # file order

    def __init__(self, cfg):
        super().__init__()
        C, F = cfg.C, cfg.F
        shapes = [(C,), (C,), (C, 3 * C), (3 * C,), (C, C), (C,),
                  (C,), (C,), (C, F), (F,), (F, C), (C,)]
        for name, shape in zip(self.NAMES, shapes):
            setattr(self, name, nn.Parameter(torch.zeros(shape)))
        self.H = cfg.H

    def forward(self, x):
        n, C = x.shape[-2], x.shape[-1]
        D = C // self.H
        a = layer_norm(x, self.ln1_w, self.ln1_b)
        q, k, v = (a @ self.qkv_w + self.qkv_b).split(C, dim=-1)
        heads = lambda z: z.unflatten(-1, (self.H, D)).transpose(-3, -2)  # (..., H, n, D)
        s = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(D)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        p = s.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (p @ heads(v)).transpose(-3, -2).flatten(-2)                  # (..., n, C)
        x = x + (y @ self.proj_w + self.proj_b)
        m = layer_norm(x, self.ln2_w, self.ln2_b)
        return x + (gelu(m @ self.fc_w + self.fc_b) @ self.fcproj_w + self.fcproj_b)


class TinyLM(nn.Module):
    def __init__(self, cfg=Config(), seed=None):
        super().__init__()
        if min(cfg.V, cfg.C, cfg.L, cfg.H, cfg.F, cfg.T) <= 0 or cfg.C % cfg.H:
            raise ValueError("tinylm: bad configuration %r" % (cfg,))
        self.cfg = cfg
        self.wte = nn.Parameter(torch.zeros(cfg.V, cfg.C))
        self.wpe = nn.Parameter(torch.zeros(cfg.T, cfg.C))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.L))
        self.lnf_w = nn.Parameter(torch.ones(cfg.C))
        self.lnf_b = nn.Parameter(torch.zeros(cfg.C))
        if seed is not None:  # GPT-2 style: N(0, 0.02) matrices, LayerNorm w = 1, zero biases
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for name, p in self.named_parameters():
                    if p.dim() == 2:
                        p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                    else:
                        p.fill_(1.0 if name.endswith(("ln1_w", "ln2_w", "lnf_w")) else 0.0)

    def file_order(self):
        """The parameters in .tlm file order."""
        out = [self.wte, self.wpe]
        for blk in self.blocks:
            out += [getattr(blk, name) for name in Block.NAMES]
        return out + [self.lnf_w, self.lnf_b]

    def forward(self, e):
        """Input rows e (n x C, n <= T; leading batch dims allowed) -> logits (n x V)."""
        n = e.shape[-2]
        if not 1 <= n <= self.cfg.T:
            raise ValueError("tinylm: %d rows; 1 to %d allowed" % (n, self.cfg.T))
        x = e + self.wpe[:n]
        for blk in self.blocks:
            x = blk(x)
        return layer_norm(x, self.lnf_w, self.lnf_b) @ self.wte.T  # tied head


def embed_bytes(model, data):
    """The input rows of a byte string: wte[b] for each byte b (n x C)."""
    return model.wte[torch.tensor(list(bytes(data)), dtype=torch.long)]


def lm_loss(logits, data):
    """Mean cross-entropy of logits[t] against the next byte data[t + 1]."""
    target = torch.tensor(list(bytes(data))[1:], dtype=torch.long)
    return nn.functional.cross_entropy(logits[:len(target)], target)


def verbalizer_loss(logits, label_bytes, label):
    """Cross-entropy of the last position's logits restricted to the label bytes."""
    z = logits[-1, list(bytes(label_bytes))]
    return -z.log_softmax(-1)[label]


def save_tlm(model, path, seed, steps, corpus):
    cfg = model.cfg
    name = corpus.encode("utf-8") if isinstance(corpus, str) else bytes(corpus)
    if len(name) > 64:
        raise ValueError("tinylm: corpus name longer than 64 bytes")
    flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in model.file_order()])
    z = zlib.compress(flat.numpy().astype("<f4").tobytes())
    head = HEADER.pack(MAGIC, VERSION, cfg.V, cfg.C, cfg.L, cfg.H, cfg.F, cfg.T, 0,
                       cfg.param_count(), seed, steps, name, len(z))
    body = head + z
    with open(path, "wb") as f:
        f.write(body + struct.pack("<I", zlib.crc32(body)))


def load_tlm(path):
    """(model, meta) from a .tlm file; ValueError with a one-line message when it is refused."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER.size:
        raise ValueError("%s: truncated (%d bytes, header is %d)" % (path, len(data), HEADER.size))
    (magic, version, V, C, L, H, F, T, reserved, P, seed, steps, name,
     Z) = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("%s: not a .tlm file (bad magic)" % path)
    if version != VERSION:
        raise ValueError("%s: unsupported .tlm version %d" % (path, version))
    if reserved:
        raise ValueError("%s: reserved field is %d, not 0" % (path, reserved))
    if min(V, C, L, H, F, T) == 0 or C % H:
        raise ValueError("%s: bad configuration V=%d C=%d L=%d H=%d F=%d T=%d"
                         % (path, V, C, L, H, F, T))
    cfg = Config(V, C, L, H, F, T)
    if P != cfg.param_count():
        raise ValueError("%s: parameter count %d, configuration implies %d"
                         % (path, P, cfg.param_count()))
    if len(data) < HEADER.size + Z + 4:
        raise ValueError("%s: truncated (%d bytes, expected %d)" % (path, len(data), HEADER.size + Z + 4))
    if len(data) > HEADER.size + Z + 4:
        raise ValueError("%s: %d bytes of trailing data" % (path, len(data) - HEADER.size - Z - 4))
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
    model = TinyLM(cfg)
    flat = torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32))
    with torch.no_grad():
        off = 0
        for p in model.file_order():
            p.copy_(flat[off:off + p.numel()].view(p.shape))
            off += p.numel()
    meta = dict(seed=seed, steps=steps, corpus=name.split(b"\0", 1)[0].decode("utf-8", "replace"),
                param_count=P)
    return model, meta
