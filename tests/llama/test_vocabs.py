"""ulpt-llama on real vocabularies without real weights (make check-llama).

For each vocabulary llama.cpp ships with tokenizer test vectors, a small random model of
architecture `llama` is written at test time (vocab_model.py, with the source's gguf-py):
the host's tokenization must equal llama.cpp's expected ids; labels of several tokens
must score as the sum of their tokens' log-probabilities computed by an independent
float64 numpy forward fed the prompt's rows by hand; a prompt trained against one
vocabulary is refused by a model with another.

ULPT_LLAMA_HOST and ULPT_LLAMA_SRC (the pinned llama.cpp source) are set by the Makefile."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
sys.path.insert(0, HERE)
import ulpt  # noqa: E402
import vocab_model  # noqa: E402

HOST = os.environ.get("ULPT_LLAMA_HOST")
SRC = os.environ.get("ULPT_LLAMA_SRC")
VOCABS = ["llama-spm", "llama-bpe", "qwen2", "gpt-2", "phi-3"]
# every label is several tokens in every vocabulary above
LABELS = ["negative review", "positive review", "not sure at all"]
TEXTS = [("The food was cold and the waiter rude.", "negative review"),
         ("Wonderful evening, we will come back!", "positive review"),
         ("Hmm. 12 euros; naïve décor — 日本 style?", "not sure at all"),
         ("  leading spaces\tand a tab", "negative review")]

pytestmark = pytest.mark.skipif(not (HOST and SRC), reason="run through `make check-llama`")


def host(*args, check=True):
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))
    r = subprocess.run([HOST, *map(str, args)], capture_output=True, text=True, timeout=600,
                       env=env)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def vocab_path(name):
    return os.path.join(SRC, "models", f"ggml-vocab-{name}.gguf")


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for text, label in rows:
            f.write(json.dumps({"text": text, "label": label}) + "\n")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    gguf = vocab_model.load_gguf_py(SRC)
    d = tmp_path_factory.mktemp("vocab-models")
    out = {}
    for i, name in enumerate(VOCABS):
        path = str(d / f"{name}.gguf")
        # the same name and width for all: only the vocabulary tells them apart; big
        # vocabularies tie the output head to the embeddings, the others do not
        w, hp = vocab_model.write_model(gguf, vocab_path(name), path, tied=name in
                                        ("llama-bpe", "qwen2"), seed=i)
        out[name] = (path, vocab_model.Forward(w, hp))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab-data")
    write_jsonl(d / "train.jsonl", TEXTS * 2)
    write_jsonl(d / "test.jsonl", TEXTS)
    return d


@pytest.mark.parametrize("name", VOCABS)
def test_tokenization_equals_llama_cpp_vectors(name, models, tmp_path):
    vectors = [(t, ids) for t, ids in vocab_model.read_vectors(vocab_path(name)) if t]
    assert len(vectors) >= 20
    write_jsonl(tmp_path / "inp.jsonl", [(t, "x") for t, _ in vectors])
    r = host("tokenize", "--gguf", models[name][0], tmp_path / "inp.jsonl")
    got = [[int(x) for x in line.split()] for line in r.stdout.splitlines()]
    assert len(got) == len(vectors)
    bad = [(t, ids, g) for (t, ids), g in zip(vectors, got) if ids != g]
    assert not bad, bad[:3]


@pytest.mark.parametrize("name", VOCABS)
def test_identity_and_bos(name, models):
    r = host("identity", "--gguf", models[name][0], "--json")
    ident = json.loads(r.stdout.strip().splitlines()[-1])
    assert ident["arch"] == "llama" and ident["n_embd"] == 64
    assert ident["n_vocab"] == models[name][1].hp["n_vocab"]
    assert ident["vocab"].startswith("fnv1a64:") and len(ident["vocab"]) == 24
    assert ident["weights"] == "F32"
    # SentencePiece vocabularies ask for BOS; of the BPE ones, llama-bpe (Llama 3) does
    expect_bos = name in ("llama-spm", "phi-3", "llama-bpe")
    assert ident["adds_bos"] == int(expect_bos), ident


def test_fingerprints_tell_the_vocabularies_apart(models):
    seen = {}
    for name in VOCABS:
        r = host("identity", "--gguf", models[name][0], "--json")
        seen[name] = json.loads(r.stdout.strip().splitlines()[-1])["vocab"]
    assert len(set(seen.values())) == len(VOCABS), seen


@pytest.fixture(scope="module")
def tuned(models, data, tmp_path_factory):
    """A prompt per vocabulary, tuned (forward-only, a few steps) inside llama.cpp."""
    d = tmp_path_factory.mktemp("vocab-prompts")
    out = {}
    for name in VOCABS:
        p = d / f"{name}.ulpt"
        r = host("tune", "--gguf", models[name][0], "--method", "forward-only",
                 "--train", data / "train.jsonl",
                 "--test", data / "test.jsonl", "--steps", 3, "--examples", 2, "--tokens", 4,
                 "--batch", 8, "--threads", 1, "--seed", 3, "--save", p, "--json")
        s = json.loads(r.stdout.strip().splitlines()[-1])
        assert s["method"] == "forward-only" and s["steps"] == 3
        assert np.isfinite(s["loss_first"]) and np.isfinite(s["loss_last"])
        out[name] = p
    return out


@pytest.mark.parametrize("name", VOCABS)
def test_served_label_scores_equal_numpy_over_the_rows_by_hand(name, models, data, tuned,
                                                               tmp_path):
    path, fwd = models[name]
    p = ulpt.Prompt.load(tuned[name])
    meta = dict(p.meta)
    assert meta["labels"].split("\n") == LABELS
    assert meta["model.arch"] == "llama" and meta["model.vocab"].startswith("fnv1a64:")
    assert meta["input.sep"] == "\n"
    scores_path = tmp_path / "scores.jsonl"
    r = host("serve", "--gguf", path, "--prompt", tuned[name], "--test", data / "test.jsonl",
             "--scores", scores_path, "--batch", 3, "--json")
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["examples"] == len(TEXTS) and s["labels"] == 3 and s["rows"] == 4
    served = [json.loads(line) for line in open(scores_path)]

    # by hand: tokens from the host, rows E from libulpt, everything else in numpy
    tok_in = tmp_path / "tok.jsonl"
    write_jsonl(tok_in, [(t + "\n", "x") for t, _ in TEXTS] + [(lab, "x") for lab in LABELS])
    r = host("tokenize", "--gguf", path, tok_in)
    ids = [[int(x) for x in line.split()] for line in r.stdout.splitlines()]
    text_ids, label_ids = ids[:len(TEXTS)], ids[len(TEXTS):]
    assert all(len(lab) >= 2 for lab in label_ids), label_ids  # several tokens each
    E = p.forward().astype(np.float64)
    ident = json.loads(host("identity", "--gguf", path, "--json").stdout.splitlines()[-1])
    bos = [fwd.embed([vocab_model.tokenizer_bos(vocab_path(name))])] if ident["adds_bos"] \
        else []
    worst = 0.0
    for k, (text, label) in enumerate(TEXTS):
        rows = np.concatenate(bos + [E, fwd.embed(text_ids[k])])
        want = fwd.label_scores(rows, label_ids)
        got = np.array(served[k]["scores"])
        worst = max(worst, float(np.max(np.abs(got - want) / np.maximum(1, np.abs(want)))))
        assert served[k]["pred"] == int(np.argmax(want)) or \
            np.sort(want)[-1] - np.sort(want)[-2] < 1e-3
        assert served[k]["label"] == LABELS.index(label)
    print(f"{name}: served label scores against numpy float64, worst relative {worst:.2e}")
    assert worst < 1e-5, worst


@pytest.mark.parametrize("name", VOCABS)
def test_a_prompt_for_another_vocabulary_is_refused(name, models, data, tuned):
    other = VOCABS[(VOCABS.index(name) + 1) % len(VOCABS)]
    r = host("serve", "--gguf", models[name][0], "--prompt", tuned[other], "--test",
             data / "test.jsonl", check=False)
    assert r.returncode == 1, r.stdout
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "model.vocab" in line, line
    mine = dict(ulpt.Prompt.load(tuned[name]).meta)["model.vocab"]
    theirs = dict(ulpt.Prompt.load(tuned[other]).meta)["model.vocab"]
    assert mine in line and theirs in line, line


def test_no_prompt_scores_equal_numpy(models, data, tmp_path):
    path, fwd = models["qwen2"]
    scores_path = tmp_path / "s.jsonl"
    host("serve", "--gguf", path, "--labels", ",".join(LABELS), "--test", data / "test.jsonl",
         "--scores", scores_path)
    served = [json.loads(line) for line in open(scores_path)]
    tok_in = tmp_path / "tok.jsonl"
    write_jsonl(tok_in, [(TEXTS[0][0] + "\n", "x")] + [(lab, "x") for lab in LABELS])
    ids = [[int(x) for x in line.split()]
           for line in host("tokenize", "--gguf", path, tok_in).stdout.splitlines()]
    want = fwd.label_scores(fwd.embed(ids[0]), ids[1:])
    np.testing.assert_allclose(served[0]["scores"], want, rtol=2e-4, atol=2e-4)


@pytest.fixture(scope="module")
def wide(data, tmp_path_factory):
    """A Llama-shaped random model of width 256 (every K-quant's super-block) with the
    llama-spm vocabulary, and a prompt tuned on it."""
    gguf = vocab_model.load_gguf_py(SRC)
    d = tmp_path_factory.mktemp("wide")
    path = str(d / "wide.gguf")
    vocab_model.write_model(gguf, vocab_path("llama-spm"), path, n_embd=256, n_head=4,
                            n_head_kv=2, n_ff=512, tied=False, seed=11)
    host("tune", "--gguf", path, "--train", data / "train.jsonl", "--steps", 2, "--examples", 2,
         "--tokens", 4, "--threads", 1, "--save", d / "p.ulpt")
    return path, d / "p.ulpt"


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M", "Q4_0"])
def test_quantized_llama_accepts_the_prompt(qtype, wide, data, tmp_path):
    path, prompt = wide
    q = tmp_path / f"wide-{qtype}.gguf"
    host("quantize", path, q, qtype)
    assert os.path.getsize(q) < os.path.getsize(path) / 2
    scores = {}
    for tag, model in (("F32", path), (qtype, q)):
        r = host("serve", "--gguf", model, "--prompt", prompt, "--test", data / "test.jsonl",
                 "--scores", tmp_path / f"{tag}.jsonl")
        assert ("trained against F32 weights; this file's are " + qtype in r.stdout) == \
            (tag != "F32"), r.stdout
        scores[tag] = np.array([json.loads(x)["scores"] for x in open(tmp_path / f"{tag}.jsonl")])
    diff = float(np.max(np.abs(scores[qtype] - scores["F32"])))
    scale = float(np.max(np.abs(scores["F32"])))
    same = float(np.mean(scores[qtype].argmax(1) == scores["F32"].argmax(1)))
    print(f"llama width 256 {qtype}: label log-prob max |diff| {diff:.3g} of scale "
          f"{scale:.3g}, same label on {same:.2f}")
    assert 0 < diff < {"Q8_0": 0.02, "Q4_K_M": 0.2, "Q4_0": 0.3}[qtype] * scale


def test_chat_template_through_llama_cpp(models, data, tmp_path):
    """phi-3's template: <|user|>, the text, <|end|>, <|assistant|>; BOS not doubled; the
    layout recorded in the prompt and repeated by serve."""
    path = models["phi-3"][0]
    write_jsonl(tmp_path / "c.jsonl", [("hello there", "x")])
    ids = [int(x) for x in host("tokenize", "--gguf", path, "--chat",
                                tmp_path / "c.jsonl").stdout.split()]
    fields = vocab_model.tokenizer_fields(vocab_model.load_gguf_py(SRC), vocab_path("phi-3"))
    tokens = next(v for k, v, _, _ in fields if k == "tokenizer.ggml.tokens")
    words = [tokens[i] for i in ids]
    assert words[0] == "<|user|>" and "<|end|>" in words and "<|assistant|>" in words, words
    assert words.index("<|user|>") < words.index("<|end|>") < words.index("<|assistant|>")
    assert "<s>" not in words and "".join(words).replace("\u2581", " ").count("hello there") == 1
    p = tmp_path / "chat.ulpt"
    host("tune", "--gguf", path, "--chat", "--train", data / "train.jsonl", "--steps", 1,
         "--examples", 2, "--tokens", 2, "--save", p)
    m = dict(ulpt.Prompt.load(p).meta)
    assert m["input.chat"] == "1" and "input.sep" not in m
    r = host("serve", "--gguf", path, "--prompt", p, "--test", data / "test.jsonl", "--json")
    assert json.loads(r.stdout.splitlines()[-1])["examples"] == len(TEXTS)


# The vocabulary's own architecture: qwen2 (halves rotated, q/k/v biases), qwen2vl
# (multi-section rotary positions, four a row in an embedding batch), and Qwen3-VL's
# qwen3vl (per-head query/key norms; input rows wider than n_embd)
OWN_ARCHS = ["qwen2", "qwen2vl", "qwen3vl"]


@pytest.fixture(scope="module")
def own_arch(data, tmp_path_factory):
    """qwen2's vocabulary in models of its own architectures, and a prompt tuned on each."""
    gguf = vocab_model.load_gguf_py(SRC)
    d = tmp_path_factory.mktemp("own-arch")
    out = {}
    for i, arch in enumerate(OWN_ARCHS):
        path = str(d / f"{arch}.gguf")
        w, hp = vocab_model.write_model(gguf, vocab_path("qwen2"), path, arch=arch,
                                        tied=arch == "qwen2", seed=20 + i)
        p = d / f"{arch}.ulpt"
        host("tune", "--gguf", path, "--method", "forward-only", "--train",
             data / "train.jsonl", "--steps", 2, "--examples", 2, "--tokens", 4,
             "--threads", 1, "--seed", 5, "--save", p)
        out[arch] = (path, vocab_model.Forward(w, hp), p)
    return out


@pytest.mark.parametrize("arch", OWN_ARCHS)
def test_the_vocabularys_own_architecture(arch, own_arch, data, tmp_path):
    path, fwd, prompt = own_arch[arch]
    ident = json.loads(host("identity", "--gguf", path, "--json").stdout.splitlines()[-1])
    assert ident["arch"] == arch and ident["adds_bos"] == 0 and ident["n_embd"] == 64
    meta = dict(ulpt.Prompt.load(prompt).meta)
    assert meta["model.arch"] == arch and meta["model.vocab"] == ident["vocab"]
    # the tokenizer does not depend on the architecture
    vectors = [(t, ids) for t, ids in vocab_model.read_vectors(vocab_path("qwen2")) if t]
    write_jsonl(tmp_path / "inp.jsonl", [(t, "x") for t, _ in vectors])
    got = [[int(x) for x in line.split()] for line in
           host("tokenize", "--gguf", path, tmp_path / "inp.jsonl").stdout.splitlines()]
    assert got == [ids for _, ids in vectors]
    # served label scores against numpy over the rows by hand, as above
    scores_path = tmp_path / "scores.jsonl"
    host("serve", "--gguf", path, "--prompt", prompt, "--test", data / "test.jsonl",
         "--scores", scores_path, "--batch", 3)
    served = [json.loads(line)["scores"] for line in open(scores_path)]
    write_jsonl(tmp_path / "tok.jsonl", [(t + "\n", "x") for t, _ in TEXTS] +
                [(lab, "x") for lab in LABELS])
    ids = [[int(x) for x in line.split()] for line in
           host("tokenize", "--gguf", path, tmp_path / "tok.jsonl").stdout.splitlines()]
    E = ulpt.Prompt.load(prompt).forward().astype(np.float64)
    worst = 0.0
    for k in range(len(TEXTS)):
        want = fwd.label_scores(np.concatenate([E, fwd.embed(ids[k])]), ids[len(TEXTS):])
        worst = max(worst, float(np.max(np.abs(np.array(served[k]) - want) /
                                        np.maximum(1, np.abs(want)))))
    print(f"qwen2 vocabulary, arch {arch}: served label scores against numpy float64, "
          f"worst relative {worst:.2e}")
    assert worst < 1e-5, worst
    # and the rotation convention is seen: the other one's forward is far off
    other = vocab_model.Forward(fwd.w, dict(fwd.hp, rope="norm"))
    off = other.label_scores(np.concatenate([E, other.embed(ids[0])]), ids[len(TEXTS):])
    assert np.max(np.abs(np.array(served[0]) - off) / np.maximum(1, np.abs(off))) > 1e-3
