"""ulpt-llama on the pretrained Llama-shaped model (make check-llama): tinylm-llama
(examples/tinylm/tinylm-llama.tlm: RMSNorm, RoPE, grouped-query attention, SwiGLU, untied
head) converted to GGUF at test time with examples/llama/convert.py, served and tuned
forward-only from JSONL files the test writes, against the reference host: the PyTorch
module (examples/tinylm/llama_torch.py) fed the same prompt file's rows through libulpt,
laid out as in training (no BOS for this vocabulary, then E, the text, the separator),
each label scored by the summed log-probability of its tokens.  Then the same prompt on
the Q8_0, Q4_K_M and Q4_0 files `ulpt-llama quantize` makes: accepted as the same model,
with the weight type's difference reported, and measured against float32.

ULPT_LLAMA_HOST and ULPT_LLAMA_SRC (the pinned llama.cpp source, for gguf-py) are set by
the Makefile."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
sys.path.insert(0, os.path.join(ROOT, "examples", "tinylm"))
sys.path.insert(0, os.path.join(ROOT, "examples", "llama"))
import llama_torch as lt  # noqa: E402
import torch_tune  # noqa: E402  (the PyTorch host of tinylm-llama)
import ulpt  # noqa: E402

HOST = os.environ.get("ULPT_LLAMA_HOST")
SRC = os.environ.get("ULPT_LLAMA_SRC")
GPT2 = os.environ.get("ULPT_LLAMA_GGUF")  # tinylm as gpt2: another model
SHIPPED = os.path.join(ROOT, "examples", "tinylm", "tinylm-llama.tlm")
FIXTURES = os.path.join(ROOT, "tests", "tinylm", "fixtures")

pytestmark = pytest.mark.skipif(not (HOST and SRC), reason="run through `make check-llama`")

torch.set_num_threads(2)


def host(*args, check=True):
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))
    r = subprocess.run([HOST, *map(str, args)], capture_output=True, text=True, timeout=600,
                       env=env)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def last_json(r):
    return json.loads(r.stdout.strip().splitlines()[-1])


def fixture_jsonl(task, split, dst, verbalizer):
    """A tinylm fixture split as users' JSONL: [(text, label)], labels named by
    verbalizer(label name)."""
    with open(os.path.join(FIXTURES, task, split + ".tsv"), encoding="utf-8") as f:
        names = f.readline().rstrip("\n").split("\t")[1:]
        rows = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    out = [(text, verbalizer(names[int(y)])) for y, text in rows]
    with open(dst, "w", encoding="utf-8") as f:
        for text, label in out:
            f.write(json.dumps({"text": text, "label": label}) + "\n")
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(the GGUF convert.py writes, the PyTorch module of the same weights)."""
    path = str(tmp_path_factory.mktemp("llama-shaped") / "tinylm-llama.gguf")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "llama", "convert.py"),
                        SHIPPED, path, "--gguf-py", os.path.join(SRC, "gguf-py")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m, _ = lt.load_llama(SHIPPED)
    m.requires_grad_(False)
    return path, m


@pytest.fixture(scope="module")
def names(model, tmp_path_factory):
    """The names fixture as JSONL (labels "f" and "m", the verbalizer of docs/TINYLM.md),
    the no-prompt accuracy, and a prompt tuned forward-only inside llama.cpp."""
    path, _ = model
    d = tmp_path_factory.mktemp("names")
    train = fixture_jsonl("names", "train", d / "train.jsonl", lambda n: n[0])
    test = fixture_jsonl("names", "test", d / "test.jsonl", lambda n: n[0])
    assert len(train) >= 24 and len(test) >= 24
    none = last_json(host("serve", "--gguf", path, "--test", d / "test.jsonl", "--json"))
    r = host("tune", "--gguf", path, "--method", "forward-only", "--train", d / "train.jsonl",
             "--test", d / "test.jsonl", "--steps", 300, "--examples", 16, "--tokens", 16,
             "--lr", 0.05, "--threads", 1, "--save", d / "names.ulpt", "--json")
    return d, test, none, last_json(r)


def reference_scores(m, E, examples, labels, sep=b"\n"):
    """The reference host: label scores (examples x labels, float64) of the PyTorch module
    over rows [E ; text ; sep ; label tokens before the scored one], each label's score its
    summed token log-probability.  The vocabulary is bytes: a token is a byte."""
    E = torch.from_numpy(np.ascontiguousarray(E, dtype=np.float32))
    out = np.zeros((len(examples), len(labels)))
    with torch.no_grad():
        for i, (text, _) in enumerate(examples):
            prefix = text.encode("utf-8") + sep
            for c, label in enumerate(labels):
                lab = label.encode("utf-8")
                rows = torch.cat([E, lt.embed_bytes(m, prefix + lab[:-1])])
                lp = torch.log_softmax(m(rows).double(), -1)
                first = E.shape[0] + len(prefix) - 1  # the row that predicts lab[0]
                out[i, c] = sum(float(lp[first + k, b]) for k, b in enumerate(lab))
    return out


def served(path, prompt, test_jsonl, scores_path, *extra):
    r = host("serve", "--gguf", path, "--prompt", prompt, "--test", test_jsonl, "--scores",
             scores_path, "--json", *extra)
    rows = [json.loads(line) for line in open(scores_path)]
    return last_json(r), np.array([x["scores"] for x in rows]), [x["pred"] for x in rows]


def test_forward_only_tuning_from_jsonl_beats_no_prompt(names):
    d, test, none, s = names
    assert none["rows"] == 0 and none["examples"] == len(test)
    assert s["method"] == "forward-only" and s["eval"] == "test"
    assert s["sequences"] == 300 * 2 * 16
    assert s["loss_last"] < s["loss_first"], s
    print(f"tinylm-llama forward-only from JSONL: test accuracy {none['acc_llama']:.4f} with no "
          f"prompt -> {s['acc_test']:.4f} tuned (loss {s['loss_first']:.3f} -> "
          f"{s['loss_last']:.3f}, {s['train_seconds']:.1f} s)")
    assert s["acc_test"] > none["acc_llama"], (s, none)


def test_the_prompt_records_the_identity(names, model):
    d, _, _, _ = names
    ident = last_json(host("identity", "--gguf", model[0], "--json"))
    assert ident["arch"] == "llama" and ident["n_embd"] == 256 and ident["adds_bos"] == 0
    m = dict(ulpt.Prompt.load(d / "names.ulpt").meta)
    assert m["model"] == "tinylm-llama" == ident["name"]
    assert m["model.arch"] == "llama" and m["model.n_embd"] == "256"
    assert m["model.vocab"] == ident["vocab"] and m["model.weights"] == "F32"
    # the label set read from the training file, in the order labels first appear there
    assert m["labels"].split("\n") == ["m", "f"] and m["input.sep"] == "\n"
    r = host("identity", "--gguf", model[0], "--prompt", d / "names.ulpt")
    assert "trained against this model\n" in r.stdout, r.stdout


def test_served_accuracy_equals_the_pytorch_host_on_every_example(names, model, tmp_path):
    d, test, _, tuned = names
    path, m = model
    v, got, pred = served(path, d / "names.ulpt", d / "test.jsonl", tmp_path / "s.jsonl")
    assert v["examples"] == len(test) and v["rows"] == 16 and not v["identity_note"]
    p = ulpt.Prompt.load(d / "names.ulpt")
    labels = dict(p.meta)["labels"].split("\n")
    E = p.forward()
    want = reference_scores(m, E, test, labels)
    # the PyTorch host itself (torch_tune.py: verbalizer logits at the separator's row)
    verbalizer = [ord(y) for y in labels]
    examples = [(t.encode(), labels.index(y)) for t, y in test]
    z = torch_tune.class_logits(m, examples, torch.from_numpy(E), verbalizer)
    assert pred == [int(x) for x in z.argmax(-1)] == [int(x) for x in want.argmax(1)]
    gold = [x[1] for x in examples]
    acc_torch = torch_tune.accuracy(m, examples, torch.from_numpy(E), verbalizer)
    assert v["acc_llama"] == pytest.approx(acc_torch, abs=1e-6)
    assert acc_torch == pytest.approx(np.mean(np.array(pred) == gold))
    assert v["acc_llama"] == pytest.approx(tuned["acc_test"], abs=1e-6)
    diff = float(np.max(np.abs(got - want)))
    print(f"tinylm-llama served (names, 16 rows): accuracy {v['acc_llama']:.4f} through "
          f"llama.cpp, {acc_torch:.4f} through the PyTorch host, same label on all "
          f"{len(test)}; label log-prob max |diff| {diff:.2g}")
    assert diff < 2e-4, diff


def test_multi_token_labels_on_longer_texts_equal_pytorch(names, model, tmp_path):
    """spam with whole label names ("ham" 3 tokens, "spam" 4) and texts of up to 64 bytes
    behind a prompt tuned a few steps: summed log-probs over every label token."""
    path, m = model
    train = fixture_jsonl("spam", "train", tmp_path / "train.jsonl", lambda n: n)
    test = fixture_jsonl("spam", "test", tmp_path / "test.jsonl", lambda n: n)
    host("tune", "--gguf", path, "--method", "forward-only", "--labels", "ham,spam",
         "--train", tmp_path / "train.jsonl", "--steps", 4, "--examples", 4, "--tokens", 8,
         "--threads", 1, "--save", tmp_path / "spam.ulpt")
    v, got, pred = served(path, tmp_path / "spam.ulpt", tmp_path / "test.jsonl",
                          tmp_path / "s.jsonl", "--batch", 5)
    assert v["examples"] == len(test) and v["labels"] == 2 and len(train) >= 24
    want = reference_scores(m, ulpt.Prompt.load(tmp_path / "spam.ulpt").forward(), test,
                            ["ham", "spam"])
    assert pred == [int(x) for x in want.argmax(1)]
    diff = float(np.max(np.abs(got - want)))
    rel = diff / float(np.max(np.abs(want)))
    print(f"tinylm-llama spam, whole label names: label log-prob max |diff| {diff:.2g} "
          f"(relative {rel:.2g}), same label on all {len(test)}")
    assert rel < 1e-5, (diff, rel)


def test_a_prompt_for_another_model_is_refused(names):
    if not GPT2:
        pytest.skip("needs tinylm's GGUF (ULPT_LLAMA_GGUF)")
    d, _, _, _ = names
    r = host("serve", "--gguf", GPT2, "--prompt", d / "names.ulpt", "--test", d / "test.jsonl",
             check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "llama" in r.stderr and "gpt2" in r.stderr, r.stderr


@pytest.fixture(scope="module")
def f32_scores(names, model, tmp_path_factory):
    d, _, _, _ = names
    return served(model[0], d / "names.ulpt", d / "test.jsonl",
                  tmp_path_factory.mktemp("f32") / "s.jsonl")


# upper bounds on a label log-prob's change, as a fraction of the largest |log-prob|, and
# on the accuracy's change (24 test examples: 0.125 is three of them)
QUANT = {"Q8_0": (0.02, 0.05), "Q4_K_M": (0.2, 0.125), "Q4_0": (0.3, 0.125)}


@pytest.mark.parametrize("qtype", list(QUANT))
def test_quantized_files_accept_the_prompt_and_report_the_difference(qtype, names, model,
                                                                     f32_scores, tmp_path):
    d, _, _, _ = names
    path = model[0]
    q = tmp_path / f"tinylm-llama-{qtype}.gguf"
    host("quantize", path, q, qtype)
    size = os.path.getsize(q) / os.path.getsize(path)
    assert size < 0.5, size
    ident = last_json(host("identity", "--gguf", q, "--json"))
    f32 = last_json(host("identity", "--gguf", path, "--json"))
    assert ident["weights"] == qtype
    assert {k: ident[k] for k in ("arch", "n_embd", "vocab", "name")} == \
        {k: f32[k] for k in ("arch", "n_embd", "vocab", "name")}
    note = f"trained against F32 weights; this file's are {qtype}"
    r = host("identity", "--gguf", q, "--prompt", d / "names.ulpt")
    assert "trained against this model; " in r.stdout and note in r.stdout, r.stdout
    r = host("serve", "--gguf", q, "--prompt", d / "names.ulpt", "--test", d / "test.jsonl")
    assert "note: " in r.stdout and note in r.stdout, r.stdout
    v32, s32, p32 = f32_scores
    v, sq, pq = served(q, d / "names.ulpt", d / "test.jsonl", tmp_path / "s.jsonl")
    assert v["identity_note"] and v["weights"] == qtype
    diff = float(np.max(np.abs(sq - s32)))
    scale = float(np.max(np.abs(s32)))
    same = float(np.mean(np.array(pq) == np.array(p32)))
    print(f"tinylm-llama {qtype}: {size:.3f} of the f32 file; accuracy {v['acc_llama']:.4f} "
          f"(f32 {v32['acc_llama']:.4f}), same label on {same:.3f}, label log-prob max |diff| "
          f"{diff:.3g} (largest |log-prob| {scale:.3g})")
    bound, acc_bound = QUANT[qtype]
    assert 0 < diff < bound * scale, (diff, scale)
    assert abs(v["acc_llama"] - v32["acc_llama"]) <= acc_bound + 1e-9
