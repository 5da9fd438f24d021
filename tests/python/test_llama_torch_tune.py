"""examples/llama/torch_tune.py, the PyTorch host of tinylm-llama: its data order is
tune's, its padded batches score as examples one at a time, its step is libulpt's
AdamW on the gradient autograd gives, and bad task files get tune's one-line errors.

Run from the repository root:  /usr/bin/python3 -m pytest -q tests/python/test_llama_torch_tune.py
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "examples", "tinylm"))
sys.path.insert(0, os.path.join(ROOT, "examples", "llama"))
import llama_format as lf  # noqa: E402
import llama_torch as lt  # noqa: E402
import torch_tune as tt  # noqa: E402

SCRIPT = os.path.join(ROOT, "examples", "llama", "torch_tune.py")
SMALL = lf.LlamaConfig(C=64, L=1, H=4, KVH=2, F=96, T=48)

torch.set_num_threads(1)


def test_splitmix64_is_the_reference_generator():
    # SplitMix64 from state 0: the published first outputs
    state, out = 0, []
    for _ in range(3):
        state, z = tt.splitmix(state)
        out.append(z)
    assert out == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_shuffle_is_fisher_yates_from_the_top():
    order = list(range(5))
    state = tt.shuffle(order, 7)
    assert sorted(order) == list(range(5))
    # by hand: i = 5..2, j = next % i, swap order[i - 1] and order[j]
    want, s = list(range(5)), 7
    for i in (5, 4, 3, 2):
        s, z = tt.splitmix(s)
        j = z % i
        want[i - 1], want[j] = want[j], want[i - 1]
    assert order == want and state == s


@pytest.fixture
def task(tmp_path):
    d = tmp_path / "toy"
    d.mkdir()
    rows = ["#\tyes\tno"] + ["%d\t%s" % (i % 2, "ab" * (1 + i % 7)) for i in range(40)]
    (d / "train.tsv").write_text("\n".join(rows) + "\n")
    (d / "test.tsv").write_text("\n".join(rows[:21]) + "\n")
    return d


def test_padded_batches_score_as_single_examples():
    model = lt.random_llama(SMALL, seed=3)
    examples = [(b"a", 0), (b"hello there", 1), (b"xyz", 1)]
    e = torch.randn(4, SMALL.C, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batched = tt.class_logits(model, examples, e, [ord("y"), ord("n")])
        for i, (text, _) in enumerate(examples):
            rows = torch.cat([e, lt.embed_bytes(model, text + b"\n")])
            alone = model(rows)[-1, [ord("y"), ord("n")]]
            assert (batched[i] - alone).abs().max().item() < 1e-5


def test_a_step_is_libulpt_adamw_on_autograds_gradient(tmp_path, task):
    # Two steps through the host's loop against the same two steps done by hand: E from
    # the prompt, dL/dE by autograd, libulpt's backward and AdamW.
    import ulpt
    model = lt.random_llama(SMALL, seed=4)
    path = str(tmp_path / "m.tlm")
    lt.save_llama(model, path, 4, 0, "")
    out = str(tmp_path / "p.ulpt")
    r = subprocess.run([sys.executable, SCRIPT, str(task), "--model", path, "--steps", "2",
                        "--batch", "3", "--tokens", "4", "--seed", "9", "--save", out,
                        "--json", "--skip-baseline"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["steps"] == 2 and res["tokens"] == 4 and res["acc_no_prompt"] == -1

    train, names = tt.load_split(str(task), "train", SMALL.T - 5)
    order, state = list(range(len(train))), 9
    state = tt.shuffle(order, state)
    p = ulpt.Prompt(n_tokens=4, dim=SMALL.C, rank=2, projection_seed=9, init_seed=9)
    opt = ulpt.Optimizer(p, kind=ulpt.OptimizerKind.ADAMW, lr=0.03, weight_decay=1e-5,
                         max_grad_norm=1.0, schedule=ulpt.Schedule.LINEAR, warmup_steps=0,
                         total_steps=2)
    for step in range(2):
        batch = [train[order[3 * step + i]] for i in range(3)]

        def loss_fn(E):
            e = torch.tensor(np.array(E), requires_grad=True)
            total = 0
            for text, y in batch:
                rows = torch.cat([e, lt.embed_bytes(model, text + b"\n")])
                z = model(rows)[-1, [names[0][0], names[1][0]]]
                total = total - z.log_softmax(-1)[y]
            loss = total / 3
            loss.backward()
            return loss.item(), e.grad.numpy()
        opt.train_step(loss_fn)
    got = ulpt.Prompt.load(out)
    np.testing.assert_allclose(got.params, p.params, rtol=0, atol=2e-6)
    assert not np.allclose(p.params, ulpt.Prompt(n_tokens=4, dim=SMALL.C, rank=2,
                                                  projection_seed=9, init_seed=9).params)
    assert got.get_meta("model") == "tinylm-llama-random" and got.get_meta("task") == "toy"


@pytest.mark.parametrize("content,message", [
    ("0\tab\n", 'train.tsv:1: expected "#<TAB>label0<TAB>label1"'),
    ("#\tyes\tyup\n0\tab\n", "different first letters"),
    ("#\tyes\tno\n2\tab\n", 'train.tsv:2: expected "0|1<TAB>text"'),
    ("#\tyes\tno\n0\tab", "the last line has no newline"),
    ("#\tyes\tno\n", "train.tsv: no examples"),
    ("#\tyes\tno\n1\t" + "x" * 60 + "\n", "with 1..31 bytes of text"),
])
def test_bad_task_files_are_refused_naming_file_and_line(tmp_path, task, content, message):
    model = lt.random_llama(SMALL, seed=4)
    path = str(tmp_path / "m.tlm")
    lt.save_llama(model, path, 4, 0, "")
    (task / "train.tsv").write_text(content)
    r = subprocess.run([sys.executable, SCRIPT, str(task), "--model", path, "--steps", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("torch_tune: ") and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_damaged_model_is_refused(tmp_path, task):
    bad = tmp_path / "bad.tlm"
    bad.write_bytes(b"\x89TLM\r\n\x1a\n" + b"\0" * 10)
    r = subprocess.run([sys.executable, SCRIPT, str(task), "--model", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "truncated" in r.stderr
