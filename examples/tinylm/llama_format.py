"""tinylm-llama's files without PyTorch: its configuration, the version-2 .tlm weights
format (docs/TINYLM.md) and the GGUF it becomes (architecture `llama`, byte vocabulary).

llama_torch.py is the model; this module is what a converter needs, NumPy only.
"""

import math
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np

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


def write_llama(cfg, flat, path, seed, steps, corpus):
    """Write float32 parameters (file order, flat) as a version-2 .tlm file, beside `path`
    and renamed over it, so a failure leaves no half file."""
    name = corpus.encode("utf-8") if isinstance(corpus, str) else bytes(corpus)
    if len(name) > 64:
        raise ValueError("tinylm-llama: corpus name longer than 64 bytes")
    flat = np.ascontiguousarray(flat, dtype="<f4").reshape(-1)
    if flat.size != cfg.param_count():
        raise ValueError("tinylm-llama: %d parameters, the configuration has %d"
                         % (flat.size, cfg.param_count()))
    z = zlib.compress(flat.tobytes())
    head = HEADER.pack(MAGIC, VERSION, ARCH_LLAMA, cfg.V, cfg.C, cfg.L, cfg.H, cfg.KVH,
                       cfg.F, cfg.T, FLAG_TIED if cfg.tied else 0, cfg.rope_base, cfg.eps,
                       cfg.param_count(), seed, steps, name, len(z))
    body = head + z
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(body + struct.pack("<I", zlib.crc32(body)))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def tlm_version(path):
    """The version field of a .tlm file (1: tinylm, 2: tinylm-llama), or None when the
    file is too short or its magic is not .tlm's."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:8] != MAGIC:
        return None
    return struct.unpack_from("<I", head, 8)[0]


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


def split_flat(cfg, flat):
    """Parameters by .tlm name from the flat float32 array of a file."""
    named, at = {}, 0
    for name, shape in cfg.shapes():
        n = math.prod(shape)
        named[name] = flat[at:at + n].reshape(shape)
        at += n
    assert at == flat.size
    return named


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
