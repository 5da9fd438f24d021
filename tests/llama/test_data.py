"""Users' data for ulpt-llama (docs/LLAMA.md, "Data"): JSONL and TSV files, the label set,
and one-line errors naming file and line (make check-llama)."""
import json
import os
import subprocess

import pytest

GGUF = os.environ.get("ULPT_LLAMA_GGUF")
HOST = os.environ.get("ULPT_LLAMA_HOST")

pytestmark = pytest.mark.skipif(not (GGUF and HOST), reason="run through `make check-llama`")


def host(*args):
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))
    return subprocess.run([HOST, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env=env)


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


GOOD = ('{"text": "fine", "label": "pos"}\n'
        '{"label": "neg", "id": [1, {"x": "}"}], "text": "bad \\u00e9\\ud83d\\ude00"}\n')


def tune(tmp_path, train, test=None, *extra):
    args = ["tune", "--gguf", GGUF, "--train", train, "--steps", 1, "--examples", 1,
            "--tokens", 2, "--threads", 1, "--json", *extra]
    if test:
        args += ["--test", test]
    return host(*args)


def error_line(r):
    assert r.returncode == 1, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_jsonl_with_other_keys_and_escapes_is_read(tmp_path):
    train = write(tmp_path / "train.jsonl", GOOD + "\n")  # a blank line is skipped
    r = tune(tmp_path, train, None, "--save", tmp_path / "p.ulpt")
    assert r.returncode == 0, r.stderr
    r = host("tokenize", "--gguf", GGUF, train)
    # tinylm's vocabulary is bytes: the escapes decoded to UTF-8
    want = [list(b"fine"), list("bad é😀".encode())]
    assert [[int(x) for x in line.split()] for line in r.stdout.splitlines()] == want


def test_label_set_comes_from_the_training_file_in_order(tmp_path):
    train = write(tmp_path / "train.jsonl", GOOD)
    r = tune(tmp_path, train, None, "--save", tmp_path / "p.ulpt")
    assert r.returncode == 0, r.stderr
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bindings", "python"))
    import ulpt
    assert ulpt.Prompt.load(tmp_path / "p.ulpt").get_meta("labels") == "pos\nneg"


def test_tsv_escapes(tmp_path):
    data = write(tmp_path / "d.tsv", "pos\ta\\tb\\\\c\\nd\r\nneg\tplain\n")
    r = host("tokenize", "--gguf", GGUF, data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [" ".join(str(b) for b in b"a\tb\\c\nd"),
                                     " ".join(str(b) for b in b"plain")]


@pytest.mark.parametrize("line, problem", [
    ('{"text": "x", "label": "pos"', "a ',' or '}' was expected"),
    ('{"text": "x"}', 'no "label"'),
    ('{"label": "pos"}', 'no "text"'),
    ('{"text": 3, "label": "pos"}', '"text" is not a string'),
    ('{"text": "x", "label": "pos"} 1', "something after the object"),
    ('["x", "pos"]', "not a JSON object"),
    ('{"text": "\\ud800", "label": "pos"}', "unpaired surrogate"),
    ('{"text": "", "label": "pos"}', "an empty text"),
    ('{"text": "x", "label": ""}', "an empty label"),
])
def test_malformed_rows_name_file_and_line(tmp_path, line, problem):
    train = write(tmp_path / "train.jsonl", GOOD + "\n" + line + "\n")
    msg = error_line(tune(tmp_path, train))
    assert f"{train}:4: " in msg and problem in msg, msg


def test_an_unknown_label_names_file_line_and_the_labels(tmp_path):
    train = write(tmp_path / "train.jsonl", GOOD)
    test = write(tmp_path / "test.jsonl", GOOD + '{"text": "x", "label": "maybe"}\n')
    msg = error_line(tune(tmp_path, train, test))
    assert f"{test}:3: " in msg and '"maybe"' in msg and "pos,neg" in msg, msg
    # and labels given on the command line are the set
    msg = error_line(tune(tmp_path, train, None, "--labels", "pos,neutral"))
    assert f"{train}:2: " in msg and '"neg"' in msg, msg


def test_a_text_too_long_for_the_context_names_file_and_line(tmp_path):
    train = write(tmp_path / "train.jsonl", GOOD + json.dumps({"text": "y" * 300,
                                                              "label": "pos"}) + "\n")
    msg = error_line(tune(tmp_path, train))
    assert f"{train}:3: the text is 301 tokens" in msg and "cells" in msg, msg


def test_other_file_problems(tmp_path):
    msg = error_line(tune(tmp_path, write(tmp_path / "train.csv", GOOD)))
    assert "must end in .jsonl or .tsv" in msg
    msg = error_line(tune(tmp_path, tmp_path / "absent.jsonl"))
    assert "absent.jsonl" in msg and "No such file" in msg
    msg = error_line(tune(tmp_path, write(tmp_path / "one.jsonl", '{"text":"a","label":"x"}\n')))
    assert "one label" in msg
    msg = error_line(tune(tmp_path, write(tmp_path / "t.tsv", "pos no tab\n")))
    assert "t.tsv:1: no tab" in msg
