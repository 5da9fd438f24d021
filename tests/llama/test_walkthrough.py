"""docs/LLAMA.md's five commands, from "I have model.gguf and train.jsonl" to a served
prompt, run exactly as written (make check-llama), on tinylm and the names fixtures."""
import os
import re
import shutil
import subprocess

import pytest

from test_llama import FIXTURES, GGUF, HOST, ROOT, tsv_to_jsonl

pytestmark = pytest.mark.skipif(not GGUF, reason="run through `make check-llama`")


def walkthrough():
    with open(os.path.join(ROOT, "docs", "LLAMA.md"), encoding="utf-8") as f:
        doc = f.read()
    block = re.search(r"<!-- walkthrough -->\n(.*?)<!-- /walkthrough -->", doc, re.S).group(1)
    return [line.strip()[2:] for line in block.splitlines() if line.strip().startswith("$ ")]


def test_the_five_commands_of_the_walkthrough(tmp_path):
    commands = walkthrough()
    assert len(commands) == 5
    shutil.copy(GGUF, tmp_path / "model.gguf")
    tsv_to_jsonl(os.path.join(FIXTURES, "names", "train.tsv"), tmp_path / "train.jsonl")
    tsv_to_jsonl(os.path.join(FIXTURES, "names", "test.tsv"), tmp_path / "test.jsonl")
    env = dict(os.environ, OMP_WAIT_POLICY="passive",
               PATH=os.path.dirname(os.path.abspath(HOST)) + os.pathsep + os.environ["PATH"])
    out = []
    for c in commands:
        r = subprocess.run(["bash", "-c", c], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, (c, r.stderr)
        out.append(r.stdout)
    assert "model.arch gpt2" in out[0] and "model.vocab fnv1a64:" in out[0]
    assert "no prompt" in out[1] and "test accuracy through llama.cpp" in out[1]
    assert os.path.exists(tmp_path / "my.ulpt") and "saved my.ulpt" in out[2]
    assert "my.ulpt (gpt2, F32, 16 rows)" in out[3]
    assert "trained against F32 weights; this file's are Q8_0" in out[4]
    acc = [float(re.search(r"through llama.cpp: ([0-9.]+)%", o).group(1)) for o in out[3:5]]
    print(f"walkthrough: tuned prompt {acc[0]}% on f32, {acc[1]}% on Q8_0")
    assert abs(acc[0] - acc[1]) <= 5, acc
