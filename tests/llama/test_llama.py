"""llama.cpp hosting libulpt (make check-llama, run by .ci/run): llama.cpp built from the
pinned package, tinylm converted to GGUF, and the host examples/llama/ulpt-llama.

ULPT_LLAMA_GGUF and ULPT_LLAMA_HOST name the converted model and the host (the Makefile
sets them)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
import ulpt  # noqa: E402

GGUF = os.environ.get("ULPT_LLAMA_GGUF")
GGUF_GELU0 = os.environ.get("ULPT_LLAMA_GGUF_GELU0")
HOST = os.environ.get("ULPT_LLAMA_HOST", os.path.join(ROOT, "examples", "llama", "ulpt-llama"))
TLM = os.path.join(ROOT, "examples", "tinylm", "tinylm.tlm")
FIXTURES = os.path.join(ROOT, "tests", "tinylm", "fixtures")

pytestmark = pytest.mark.skipif(not GGUF, reason="run through `make check-llama`")


def host(*args):
    # llama.cpp's OpenMP threads wait passively, or a busy machine makes them crawl
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))
    return subprocess.run([HOST, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def check():
    r = host("check", "--gguf", GGUF, "--tlm", TLM, "--gelu-zero-gguf", GGUF_GELU0, "--json")
    assert r.returncode == 0, r.stderr
    return r.stdout, last_json(r.stdout)


def test_logits_agree_with_tinylm_up_to_the_half_float_gelu_table(check):
    _, c = check
    assert c["positions"] > 400
    # llama.cpp's CPU GELU reads a float16 table: about 1e-3 of a logit row's scale
    assert c["max_rel"] < 1e-2, c
    # the table really is in play: tinylm's logits move when GELU goes through half floats
    assert c["half_gelu_effect"] > 1e-4, c
    # where GELU is exactly 0 (every input below -10) and the table is not read, what is
    # left is float rounding
    assert 0 <= c["max_rel_gelu_zero"] < 2e-5, c
    assert c["max_rel_gelu_zero"] < c["max_rel"] / 10, c


def test_bytes_are_token_ids(check):
    out, _ = check
    assert "maps each of 96 ASCII bytes to id = byte" in out


def test_a_prompt_for_another_model_is_refused(check, tmp_path):
    out, _ = check
    assert 'a prompt tuned for model "tinylm-random" is refused' in out
    assert 'a prompt tuned for model.vocab "fnv1a64:0123456789abcdef" is refused' in out
    # and by serve, with the file's model and the GGUF's named, and exit status 1
    p = ulpt.Prompt(n_tokens=4, dim=128, rank=2, projection_seed=1)
    p.set_meta("model", "gpt2-small")
    p.set_meta("task", "names")
    path = tmp_path / "other.ulpt"
    p.save(path)
    r = host("serve", "--gguf", GGUF, "--prompt", path, os.path.join(FIXTURES, "names"))
    assert r.returncode == 1
    assert "gpt2-small" in r.stderr and '"tinylm"' in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_serving_matches_tinylm_on_the_fixtures(tmp_path):
    # an untrained prompt: the point is that both forwards agree on every example
    p = ulpt.Prompt(n_tokens=8, dim=128, rank=2, projection_seed=5, init_seed=5)
    p.set_meta("model", "tinylm")
    path = tmp_path / "p.ulpt"
    p.save(path)
    for task in ["names", "spam"]:
        r = host("serve", "--gguf", GGUF, "--prompt", path, "--tlm", TLM, "--batch", "8",
                 "--json", os.path.join(FIXTURES, task))
        assert r.returncode == 0, r.stderr
        s = last_json(r.stdout)
        assert s["examples"] >= 24
        assert s["label_agreement"] >= 0.99, s
        assert abs(s["acc_llama"] - s["acc_tinylm"]) <= 1 / s["examples"], s
        assert s["max_rel_label_logit"] < 1e-2, s


def test_batched_tenants_give_the_one_at_a_time_answers(tmp_path):
    d = tmp_path / "prompts"
    d.mkdir()
    for i, task in enumerate(["names", "spam", "names", "spam"]):
        p = ulpt.Prompt(n_tokens=4 + 4 * i, dim=128, rank=2, projection_seed=i, init_seed=i)
        p.set_meta("model", "tinylm")
        p.set_meta("task", task)
        p.save(d / f"p{i}.ulpt")
    q = ulpt.Prompt(n_tokens=4, dim=128, rank=2)
    q.set_meta("model", "someone-else")
    q.save(d / "foreign.ulpt")
    r = host("tenants", "--gguf", GGUF, "--batch", "8", "--requests", "64", "--json", d, FIXTURES)
    assert r.returncode == 0, r.stderr
    t = last_json(r.stdout)
    assert t["prompts"] == 4 and t["disagree"] == 0 and t["max_diff"] < 1e-3, t
    assert "not served" in r.stdout and "someone-else" in r.stdout


def tsv_to_jsonl(src, dst):
    """A tinylm task split as the users' format: label names instead of 0/1."""
    with open(src, encoding="utf-8") as f:
        names = f.readline().rstrip("\n").split("\t")[1:]
        rows = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    with open(dst, "w", encoding="utf-8") as f:
        for label, text in rows:
            # the verbalizer of docs/TINYLM.md: each label's first byte
            f.write(json.dumps({"text": text, "label": names[int(label)][0]}) + "\n")
    return len(rows)


@pytest.fixture(scope="module")
def tuned_jsonl(tmp_path_factory):
    """A names prompt tuned forward-only inside llama.cpp from JSONL files."""
    d = tmp_path_factory.mktemp("tinylm-jsonl")
    n_train = tsv_to_jsonl(os.path.join(FIXTURES, "names", "train.tsv"), d / "train.jsonl")
    n_test = tsv_to_jsonl(os.path.join(FIXTURES, "names", "test.tsv"), d / "test.jsonl")
    assert n_train >= 24 and n_test >= 24
    r = host("tune", "--gguf", GGUF, "--train", d / "train.jsonl", "--test", d / "test.jsonl",
             "--steps", 40, "--examples", 8, "--tokens", 8, "--lr", 0.05, "--threads", 1,
             "--save", d / "names.ulpt", "--json")
    assert r.returncode == 0, r.stderr
    return d, last_json(r.stdout)


def test_forward_only_tuning_from_jsonl(tuned_jsonl):
    d, s = tuned_jsonl
    assert s["method"] == "forward-only" and s["eval"] == "test"
    assert s["sequences"] == 40 * 2 * 8
    assert s["loss_last"] < s["loss_first"] + 0.5, s  # a short run: it must not blow up
    p = ulpt.Prompt.load(d / "names.ulpt")
    m = dict(p.meta)
    assert m["model"] == "tinylm" and m["model.arch"] == "gpt2" and m["model.n_embd"] == "128"
    assert m["model.weights"] == "F32" and sorted(m["labels"].split("\n")) == ["f", "m"]
    assert m["task"] == d.name
    print(f"tinylm forward-only from JSONL: test accuracy {s['acc_before']:.3f} -> "
          f"{s['acc_test']:.3f} in {s['train_seconds']:.1f} s")


def test_served_accuracy_equals_tinylm_on_every_example(tuned_jsonl):
    d, s = tuned_jsonl
    r = host("serve", "--gguf", GGUF, "--prompt", d / "names.ulpt", "--test", d / "test.jsonl",
             "--tlm", TLM, "--json")
    assert r.returncode == 0, r.stderr
    v = last_json(r.stdout)
    assert v["label_agreement"] == 1.0 and v["acc_llama"] == v["acc_tinylm"], v
    assert abs(v["acc_llama"] - s["acc_test"]) <= 1 / v["examples"], (v, s)
    assert v["max_rel_label_logit"] < 1e-2, v
    print(f"tinylm served: {v['acc_llama']:.4f} through llama.cpp, {v['acc_tinylm']:.4f} "
          f"through tinylm's C forward, label scores within {v['max_abs_label_logit']:.2g}")


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_K_M"])
def test_quantized_models_accept_the_prompt_and_report_the_difference(qtype, tuned_jsonl,
                                                                      tmp_path):
    d, _ = tuned_jsonl
    q = tmp_path / f"tinylm-{qtype}.gguf"
    r = host("quantize", GGUF, q, qtype)
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(q) < os.path.getsize(GGUF)
    ident = last_json(host("identity", "--gguf", q, "--json").stdout)
    assert ident["weights"] == qtype, ident
    f32 = last_json(host("identity", "--gguf", GGUF, "--json").stdout)
    assert ident["vocab"] == f32["vocab"] and ident["name"] == f32["name"]
    scores = {}
    acc = {}
    for tag, model in (("f32", GGUF), (qtype, q)):
        r = host("serve", "--gguf", model, "--prompt", d / "names.ulpt", "--test",
                 d / "test.jsonl", "--scores", tmp_path / f"{tag}.jsonl", "--json")
        assert r.returncode == 0, r.stderr
        v = last_json(r.stdout)
        acc[tag] = v["acc_llama"]
        assert v["identity_note"] == (tag != "f32"), v
        scores[tag] = np.array([json.loads(x)["scores"] for x in open(tmp_path / f"{tag}.jsonl")])
    r = host("serve", "--gguf", q, "--prompt", d / "names.ulpt", "--test", d / "test.jsonl")
    assert "trained against F32 weights; this file's are " + qtype in r.stdout, r.stdout
    diff = float(np.max(np.abs(scores[qtype] - scores["f32"])))
    same = float(np.mean(scores[qtype].argmax(1) == scores["f32"].argmax(1)))
    print(f"tinylm {qtype}: accuracy {acc[qtype]:.4f} (f32 {acc['f32']:.4f}), same label on "
          f"{same:.3f}, label log-prob max |diff| {diff:.3g}")
    assert diff < {"Q8_0": 0.05, "Q4_0": 0.5, "Q4_K_M": 0.5}[qtype], diff
    assert abs(acc[qtype] - acc["f32"]) <= {"Q8_0": 0.05, "Q4_0": 0.2, "Q4_K_M": 0.2}[qtype]
