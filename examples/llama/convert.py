"""Convert tinylm weights (.tlm, docs/TINYLM.md) to a GGUF file that llama.cpp runs as
architecture `gpt2`, or the Llama-shaped tinylm-llama's as architecture `llama`.

    convert.py MODEL.tlm OUT.gguf [--f16]

The architecture comes from the file: a version-1 .tlm is tinylm (`gpt2`, below), a
version-2 .tlm is tinylm-llama (`llama`: RMSNorm, adjacent-pair RoPE, grouped-query
attention, SwiGLU, untied head; examples/tinylm/llama_format.py writes it, with the same
byte vocabulary and naming as here: "tinylm-llama", or "tinylm-llama-random" for weights
without a training record).  --f16 stores its matrices as float16 (llama only).

tinylm has GPT-2's shape: learned positions, pre-LayerNorm blocks with a fused QKV
projection, a tanh-GELU MLP and an output head tied to the token embeddings. The GGUF
keeps every tensor in float32 (no rounding on the way) and has no `output.weight`, so
llama.cpp reuses `token_embd.weight` as the head, as tinylm does.

The vocabulary is byte-level: token id b is byte b, spelled as GPT-2's byte-to-character
table spells it, with no merges. A host maps bytes to ids itself (id = byte), so no
tokenizer behaviour can move them.

`general.name` is the identity libulpt prompts carry in their "model" metadata: "tinylm"
for trained weights, "tinylm-random" for weights without a training record, as
examples/tinylm/tune writes it. The configuration comes from the .tlm header, so whatever
weights the project ships, the converter follows.

Needs NumPy and the `gguf` package that ships inside llama.cpp's source (gguf-py): put its
directory on PYTHONPATH or pass --gguf-py DIR.
"""

import argparse
import os
import struct
import sys
import zlib

import numpy as np

MAGIC = b"\x89TLM\r\n\x1a\n"
# magic, version, V C L H F T, reserved, P, seed, steps, corpus, Z
HEADER = struct.Struct("<8s8I3Q64sQ")
LN_EPS = 1e-5


class ConvertError(Exception):
    pass


def param_count(V, C, L, F, T):
    block = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * F + F) + (F * C + C)
    return V * C + T * C + L * block + 2 * C


def read_tlm(path):
    """The configuration, the training record and the parameters of a .tlm file, with the
    checks docs/TINYLM.md asks of a loader."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER.size + 4:
        raise ConvertError(f"{path}: {len(data)} bytes is too short for a .tlm file")
    magic, version, V, C, L, H, F, T, reserved, P, seed, steps, corpus, Z = \
        HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ConvertError(f"{path}: not a .tlm file (bad magic)")
    if version != 1:
        raise ConvertError(f"{path}: .tlm version {version}, this converter reads version 1")
    if reserved != 0:
        raise ConvertError(f"{path}: nonzero reserved field")
    if 0 in (V, C, L, H, F, T) or C % H:
        raise ConvertError(f"{path}: bad configuration V={V} C={C} L={L} H={H} F={F} T={T}")
    if P != param_count(V, C, L, F, T):
        raise ConvertError(f"{path}: parameter count {P} does not match the configuration")
    if len(data) != HEADER.size + Z + 4:
        raise ConvertError(f"{path}: {len(data)} bytes, the header says {HEADER.size + Z + 4}")
    (crc,) = struct.unpack_from("<I", data, HEADER.size + Z)
    if zlib.crc32(data[:HEADER.size + Z]) != crc:
        raise ConvertError(f"{path}: CRC-32 mismatch (damaged file)")
    d = zlib.decompressobj()
    raw = d.decompress(data[HEADER.size:HEADER.size + Z], 4 * P + 1)
    if len(raw) != 4 * P or not d.eof or d.unused_data:
        raise ConvertError(f"{path}: the parameters do not inflate to exactly {4 * P} bytes")
    params = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    corpus = corpus.split(b"\0", 1)[0].decode("utf-8", "replace")
    cfg = dict(V=V, C=C, L=L, H=H, F=F, T=T)
    return cfg, dict(seed=seed, steps=steps, corpus=corpus), params


def split_params(cfg, params):
    """Named arrays in file order; matrices as tinylm stores them, [in x out]."""
    V, C, L, F, T = cfg["V"], cfg["C"], cfg["L"], cfg["F"], cfg["T"]
    at = 0

    def take(*shape):
        nonlocal at
        n = int(np.prod(shape))
        a = params[at:at + n].reshape(shape)
        at += n
        return a

    out = {"wte": take(V, C), "wpe": take(T, C), "blocks": []}
    for _ in range(L):
        b = {}
        b["ln1_w"], b["ln1_b"] = take(C), take(C)
        b["qkv_w"], b["qkv_b"] = take(C, 3 * C), take(3 * C)
        b["proj_w"], b["proj_b"] = take(C, C), take(C)
        b["ln2_w"], b["ln2_b"] = take(C), take(C)
        b["fc_w"], b["fc_b"] = take(C, F), take(F)
        b["fcproj_w"], b["fcproj_b"] = take(F, C), take(C)
        out["blocks"].append(b)
    out["lnf_w"], out["lnf_b"] = take(C), take(C)
    assert at == params.size
    return out


def byte_spellings():
    """GPT-2's byte-level table: printable bytes stand for themselves, the others are
    shifted to unused code points from U+0100 on, so every byte has a visible
    one-character spelling."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    spell, shift = {}, 0
    for b in range(256):
        if b in keep:
            spell[b] = chr(b)
        else:
            spell[b] = chr(256 + shift)
            shift += 1
    return [spell[b] for b in range(256)]


def model_name(meta, gelu_zero=False):
    name = "tinylm" if meta["corpus"] else "tinylm-random"
    return name + "-gelu-zero" if gelu_zero else name  # another model: its own name


# --gelu-zero: every MLP pre-activation lowered by this much, far below -10, where both
# llama.cpp's GELU (which returns 0 there without its half-float table) and the tanh form
# are exactly 0.  The MLPs then add only their output bias, and the rest of the model
# can be compared with tinylm's C forward down to float rounding.
GELU_ZERO_SHIFT = 100.0


def convert(tlm_path, out_path, gguf, gelu_zero=False):
    cfg, meta, params = read_tlm(tlm_path)
    if cfg["V"] != 256:
        raise ConvertError(f"{tlm_path}: vocabulary of {cfg['V']}, a byte-level model has 256")
    w = split_params(cfg, params)
    if gelu_zero:
        for b in w["blocks"]:
            b["fc_b"] = b["fc_b"] - np.float32(GELU_ZERO_SHIFT)
    # Written beside the target and renamed over it, so a failed run leaves no half file.
    tmp = out_path + ".tmp"
    writer = gguf.GGUFWriter(tmp, "gpt2")
    writer.add_name(model_name(meta, gelu_zero))
    writer.add_description(
        f"tinylm (docs/TINYLM.md) converted from {os.path.basename(tlm_path)}: "
        f"trained on {meta['corpus'] or 'nothing'}, seed {meta['seed']}, "
        f"{meta['steps']} steps" +
        (f"; MLP pre-activations lowered by {GELU_ZERO_SHIFT:g} (GELU exactly 0)"
         if gelu_zero else ""))
    writer.add_context_length(cfg["T"])
    writer.add_embedding_length(cfg["C"])
    writer.add_feed_forward_length(cfg["F"])
    writer.add_block_count(cfg["L"])
    writer.add_head_count(cfg["H"])
    writer.add_layer_norm_eps(LN_EPS)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(byte_spellings())
    writer.add_token_types([gguf.TokenType.NORMAL] * 256)
    # No merges, so every byte stays its own token.  llama.cpp's GPT-2 tokenizer needs
    # the merges key and gguf-py refuses an empty array, so it holds one empty rule,
    # which pairs two empty symbols and therefore never applies.
    writer.add_token_merges([""])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)

    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    # GGUF stores a matrix applied as y = W x with shape [out, in] (NumPy order), so
    # tinylm's [in x out] matrices are transposed.
    writer.add_tensor("token_embd.weight", f32(w["wte"]))
    writer.add_tensor("position_embd.weight", f32(w["wpe"]))
    for l, b in enumerate(w["blocks"]):
        p = f"blk.{l}."
        writer.add_tensor(p + "attn_norm.weight", f32(b["ln1_w"]))
        writer.add_tensor(p + "attn_norm.bias", f32(b["ln1_b"]))
        writer.add_tensor(p + "attn_qkv.weight", f32(b["qkv_w"].T))
        writer.add_tensor(p + "attn_qkv.bias", f32(b["qkv_b"]))
        writer.add_tensor(p + "attn_output.weight", f32(b["proj_w"].T))
        writer.add_tensor(p + "attn_output.bias", f32(b["proj_b"]))
        writer.add_tensor(p + "ffn_norm.weight", f32(b["ln2_w"]))
        writer.add_tensor(p + "ffn_norm.bias", f32(b["ln2_b"]))
        writer.add_tensor(p + "ffn_up.weight", f32(b["fc_w"].T))
        writer.add_tensor(p + "ffn_up.bias", f32(b["fc_b"]))
        writer.add_tensor(p + "ffn_down.weight", f32(b["fcproj_w"].T))
        writer.add_tensor(p + "ffn_down.bias", f32(b["fcproj_b"]))
    writer.add_tensor("output_norm.weight", f32(w["lnf_w"]))
    writer.add_tensor("output_norm.bias", f32(w["lnf_b"]))

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return cfg, meta


def convert_llama(tlm_path, out_path, gguf, f16=False):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "tinylm"))
    import llama_format
    try:
        cfg, meta, flat = llama_format.read_llama(tlm_path)
    except ValueError as e:
        raise ConvertError(str(e))
    name = "tinylm-llama" if meta["corpus"] else "tinylm-llama-random"
    desc = (f"tinylm-llama (docs/TINYLM.md) converted from {os.path.basename(tlm_path)}: "
            f"trained on {meta['corpus'] or 'nothing'}, seed {meta['seed']}, "
            f"{meta['steps']} steps")
    try:
        llama_format.write_gguf_arrays(cfg, llama_format.split_flat(cfg, flat), out_path,
                                       gguf, name, desc, f16)
    except ValueError as e:
        raise ConvertError(f"{tlm_path}: {e}")
    return cfg, name


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tlm", help="tinylm weights (.tlm)")
    ap.add_argument("out", help="GGUF file to write")
    ap.add_argument("--gguf-py", help="llama.cpp's gguf-py directory (else PYTHONPATH)")
    ap.add_argument("--gelu-zero", action="store_true",
                    help=f"a test variant: every MLP pre-activation lowered by "
                         f"{GELU_ZERO_SHIFT:g}, so GELU is exactly 0 in every engine")
    ap.add_argument("--f16", action="store_true",
                    help="store a Llama-shaped model's matrices as float16")
    args = ap.parse_args(argv)
    if args.gguf_py:
        sys.path.insert(0, args.gguf_py)
    try:
        import gguf
    except ImportError as e:
        print(f"convert.py: cannot import gguf ({e}); pass --gguf-py LLAMA_CPP_SOURCE/gguf-py",
              file=sys.stderr)
        return 1
    try:
        with open(args.tlm, "rb") as f:
            head = f.read(12)
        version = struct.unpack_from("<I", head, 8)[0] \
            if len(head) == 12 and head[:8] == MAGIC else None
        if version == 2:
            if args.gelu_zero:
                raise ConvertError("--gelu-zero is for tinylm (gpt2); tinylm-llama has no GELU")
            cfg, name = convert_llama(args.tlm, args.out, gguf, args.f16)
            print(f"convert.py: {args.out}: llama, {cfg.L} blocks, width {cfg.C}, "
                  f"{cfg.H} query heads, {cfg.KVH} key/value heads, MLP {cfg.F}, "
                  f"context {cfg.T}, 256 byte tokens, "
                  f"{'float16' if args.f16 else 'float32'}, model \"{name}\"")
            return 0
        if args.f16:
            raise ConvertError("--f16 is for a Llama-shaped model; tinylm stays float32")
        cfg, meta = convert(args.tlm, args.out, gguf, args.gelu_zero)
    except (ConvertError, OSError) as e:
        print(f"convert.py: {e}", file=sys.stderr)
        return 1
    print(f"convert.py: {args.out}: gpt2, {cfg['L']} blocks, width {cfg['C']}, "
          f"{cfg['H']} heads, context {cfg['T']}, 256 byte tokens, "
          f"model \"{model_name(meta, args.gelu_zero)}\"" +
          (" (GELU held at 0)" if args.gelu_zero else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
