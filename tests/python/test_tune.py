"""The example host examples/tinylm/tune on the committed task fixtures: it tunes, saves
and reloads prompts, its loss and accuracy agree with an independent PyTorch host built
from tinylm_torch and the Python binding, and its errors are one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "examples", "tinylm"))
import tinylm_torch as tl  # noqa: E402
import ulpt  # noqa: E402

TUNE = os.path.join(ROOT, "examples", "tinylm", "tune")
MODEL = os.path.join(ROOT, "examples", "tinylm", "tinylm.tlm")
FIXTURES = os.path.join(ROOT, "tests", "tinylm", "fixtures")


def tune(*args):
    return subprocess.run([TUNE, "--model", MODEL, *map(str, args)], capture_output=True,
                          text=True)


def tune_json(*args):
    r = tune(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def read_split(task, part):
    with open(os.path.join(FIXTURES, task, part + ".tsv"), "rb") as f:
        lines = f.read().split(b"\n")
    head = lines[0].split(b"\t")
    verbalizer = bytes([head[1][0], head[2][0]])
    rows = [(int(l[:1]), l[2:]) for l in lines[1:] if l]
    return verbalizer, rows


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)  # 24 short sequences: threads only contend
    m, _ = tl.load_tlm(MODEL)
    return m.double()


def torch_host(model, e, task, part):
    """Mean verbalizer loss and accuracy of prompt rows e (None: no prompt), in float64."""
    verbalizer, rows = read_split(task, part)
    losses, right = [], 0
    with torch.no_grad():
        for label, text in rows:
            x = tl.embed_bytes(model, text + b"\n")
            if e is not None:
                x = torch.cat([torch.from_numpy(e).double(), x])
            logits = model(x)
            losses.append(float(tl.verbalizer_loss(logits, verbalizer, label)))
            z = logits[-1, list(verbalizer)]
            right += int(torch.argmax(z)) == label
    return float(np.mean(losses)), right / len(rows)


@pytest.mark.parametrize("task", ["names", "spam", "sotu", "lang"])
def test_fixtures_are_well_formed(task):
    for part in ("train", "test"):
        verbalizer, rows = read_split(task, part)
        assert verbalizer[0] != verbalizer[1]
        assert len(rows) == 24 and {l for l, _ in rows} == {0, 1}
        assert all(1 <= len(t) <= 64 and b"\t" not in t for _, t in rows)


@pytest.mark.parametrize("task", ["names", "spam"])
def test_tuning_lowers_the_loss_and_the_host_matches_pytorch(task, model, tmp_path):
    path = tmp_path / "p.ulpt"
    # the whole training fixture in every batch: the first loss is the initial prompt's
    r = tune_json(os.path.join(FIXTURES, task), "--steps", 40, "--batch", 24, "--lr", 0.05,
                  "--seed", 7, "--save", path)
    assert r["params"] == 16 * 2 + 2 * 128 and r["file_bytes"] == os.path.getsize(path)
    assert r["loss_last"] < r["loss_first"] - 0.05

    # the initial prompt, rebuilt from the same options, scores the same loss in PyTorch
    p0 = ulpt.Prompt(n_tokens=16, rank=2, dim=128, projection_seed=7, init_seed=7)
    loss0, _ = torch_host(model, p0.forward(), task, "train")
    assert abs(loss0 - r["loss_first"]) < 1e-4 * max(1.0, loss0)

    # the saved prompt: same accuracy when reloaded, and the same in PyTorch
    p = ulpt.Prompt.load(path)
    assert p.meta["task"] == task and p.meta["model"] == "tinylm"
    back = tune_json(os.path.join(FIXTURES, task), "--load", path)
    assert back["acc_test"] == r["acc_test"] and back["method"] == "loaded"
    assert back["rank"] == 2 and back["scale_shift"] is True and back["steps"] == 0
    _, acc = torch_host(model, p.forward(), task, "test")
    assert abs(acc - r["acc_test"]) < 1e-6  # the JSON has 6 decimals

    # no prompt: the frozen model alone
    none = tune_json(os.path.join(FIXTURES, task), "--method", "none")
    _, acc_none = torch_host(model, None, task, "test")
    assert abs(none["acc_test"] - acc_none) < 1e-6 and none["params"] == 0


def test_forward_only_tuning_scores_the_perturbed_prompts_and_learns(model):
    d = os.path.join(FIXTURES, "names")
    # the whole training fixture in every batch: the first loss is the mean over the 2q
    # perturbed prompts theta +- eps*u, which is the initial prompt's loss up to O(eps^2)
    r = tune_json(d, "--zo", "--directions", 2, "--eps", 1e-3, "--steps", 60, "--batch", 24,
                  "--lr", 0.05, "--seed", 7)
    assert r["forward_only"] is True and r["directions"] == 2 and r["eps"] == 1e-3
    p0 = ulpt.Prompt(n_tokens=16, rank=2, dim=128, projection_seed=7, init_seed=7)
    loss0, _ = torch_host(model, p0.forward(), "names", "train")
    assert abs(loss0 - r["loss_first"]) < 1e-4 * max(1.0, loss0)
    assert r["loss_last"] < r["loss_first"] - 0.02
    # the (prompt, example) pairs spread over any number of workers give the same run
    a = tune_json(d, "--zo", "--directions", 3, "--steps", 5, "--seed", 3, "--threads", 1)
    b = tune_json(d, "--zo", "--directions", 3, "--steps", 5, "--seed", 3, "--threads", 3)
    assert a["loss_last"] == pytest.approx(b["loss_last"], rel=1e-5)
    assert a["acc_test"] == b["acc_test"]
    for bad in (["--eps", "0"], ["--eps", "nan"], ["--directions", "0"]):
        e = tune(d, "--zo", *bad)
        assert e.returncode == 2 and bad[0] in e.stderr and e.stderr.count("\n") == 1


def test_methods_train_what_they_say(tmp_path):
    d = os.path.join(FIXTURES, "names")
    assert tune_json(d, "--method", "vanilla", "--steps", 2)["params"] == 16 * 128
    assert tune_json(d, "--rank", 8, "--steps", 2)["params"] == 16 * 8 + 2 * 128
    assert tune_json(d, "--no-scale-shift", "--steps", 2)["params"] == 16 * 2
    a = tune_json(d, "--steps", 5, "--seed", 3, "--threads", 1)
    b = tune_json(d, "--steps", 5, "--seed", 3, "--threads", 3)
    assert a["loss_last"] == pytest.approx(b["loss_last"], rel=1e-5)  # threads: same sums


def test_initialisation_options_start_where_they_say(model, tmp_path):
    d = os.path.join(FIXTURES, "names")
    # --init-text: the first loss is that of the prompt fitted to the embeddings of the
    # text's bytes (repeated to 16 rows), fitted here through the Python binding
    text = b"female or male? "[:10]
    r = tune_json(d, "--steps", 3, "--batch", 24, "--seed", 5, "--init-text", text.decode())
    assert r["init_text"] is True
    target = tl.embed_bytes(model, (text * 2)[:16]).detach().numpy().astype(np.float32)
    p0 = ulpt.Prompt(n_tokens=16, rank=2, dim=128, projection_seed=5, init_seed=5)
    p0.init_from_embeddings(target, max_iters=100, tol=1e-10)
    loss0, _ = torch_host(model, p0.forward(), "names", "train")
    assert abs(loss0 - r["loss_first"]) < 1e-4 * max(1.0, loss0)
    random0, _ = torch_host(model, ulpt.Prompt(n_tokens=16, rank=2, dim=128, projection_seed=5,
                                               init_seed=5).forward(), "names", "train")
    assert abs(random0 - loss0) > 1e-3  # the fit is not the random start
    # --init-std 0: Z = 0, so E = 0 (s = 1, b = 0) at the first step
    r = tune_json(d, "--steps", 1, "--batch", 24, "--init-std", 0)
    zero, _ = torch_host(model, np.zeros((16, 128), np.float32), "names", "train")
    assert r["init_std"] == 0 and abs(zero - r["loss_first"]) < 1e-4 * max(1.0, zero)
    # --groups: a projection per group, the same trainable parameters
    path = tmp_path / "g.ulpt"
    r = tune_json(d, "--steps", 2, "--groups", 4, "--save", path)
    assert r["groups"] == 4 and r["params"] == 16 * 2 + 2 * 128
    assert ulpt.Prompt.load(path).n_groups == 4


def test_the_loss_curve_averages_windows_of_steps():
    d = os.path.join(FIXTURES, "names")
    r = tune_json(d, "--steps", 11, "--curve", 5, "--seed", 2)
    assert r["curve_every"] == 5 and len(r["curve"]) == 3
    assert r["curve"][2] == pytest.approx(r["loss_last"], abs=1e-5)  # a window of one step
    r1 = tune_json(d, "--steps", 1, "--seed", 2)
    assert all(np.isfinite(r["curve"])) and r1["loss_first"] == r["loss_first"]
    assert "curve" not in tune_json(d, "--steps", 2)


def test_errors_are_one_line(tmp_path):
    r = tune(tmp_path / "nowhere")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    d = os.path.join(FIXTURES, "names")
    for bad, words in ((["--groups", 3], "does not divide"), (["--curve", 5], "--json"),
                       (["--method", "vanilla", "--init-text", "ab"], "--method ulpt"),
                       (["--init-std", "-1"], "--init-std"), (["--init-text", ""], "--init-text")):
        e = tune(d, *bad)
        assert e.returncode == 2 and words in e.stderr and e.stderr.count("\n") == 1, e.stderr
    assert "nowhere/test.tsv" in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "test.tsv").write_bytes(b"#\tyes\tno\n0\tfine\n2\tlabel two\n")
    r = tune(bad, "--method", "none")
    assert r.returncode == 1 and "test.tsv:3:" in r.stderr and r.stderr.count("\n") == 1
    (bad / "test.tsv").write_bytes(b"#\tyes\tyeah\n0\tx\n")
    r = tune(bad, "--method", "none")
    assert r.returncode == 1 and "different first letters" in r.stderr
    (bad / "test.tsv").write_bytes(b"#\tyes\tno\n0\t" + b"x" * 200 + b"\n")
    r = tune(bad, "--method", "none")
    assert r.returncode == 1 and "test.tsv:2:" in r.stderr
    r = tune(os.path.join(FIXTURES, "names"), "--rank", "0")
    assert r.returncode == 2 and "--rank" in r.stderr
    r = tune(os.path.join(FIXTURES, "names"), "--method", "lora")
    assert r.returncode == 2 and "--method" in r.stderr
    small = ulpt.Prompt(n_tokens=4, rank=2, dim=64)
    small.save(tmp_path / "d64.ulpt")
    r = tune(os.path.join(FIXTURES, "names"), "--load", tmp_path / "d64.ulpt")
    assert r.returncode == 1 and "width 128" in r.stderr
    # a model whose loss is NaN: the failing example is named, from whichever worker
    broken, _ = tl.load_tlm(MODEL)
    with torch.no_grad():
        broken.lnf_w[5] = float("nan")
    tl.save_tlm(broken, tmp_path / "nan.tlm", 0, 0, "broken")
    r = subprocess.run([TUNE, os.path.join(FIXTURES, "names"), "--model", tmp_path / "nan.tlm",
                        "--method", "none"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "evaluation: example on line" in r.stderr and "names/test.tsv" in r.stderr
    r = subprocess.run([TUNE, os.path.join(FIXTURES, "names"), "--model", tmp_path / "nan.tlm",
                        "--skip-baseline", "--steps", "1"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "step 1:" in r.stderr and "names/train.tsv" in r.stderr
    r = tune(os.path.join(FIXTURES, "names"), "--model", tmp_path / "d64.ulpt")
    assert r.returncode == 1 and "not a .tlm file" in r.stderr
