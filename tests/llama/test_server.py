"""llama.cpp's own HTTP server with ULPT prompts (0002-server-ulpt.patch, make check-llama):
answers against `ulpt-llama serve` for the same prompt and text, many requests for
different prompts at once, bad input, and prompts added and removed while serving.

ULPT_LLAMA_SERVER names the patched llama-server, ULPT_LLAMA_GGUF the model and
ULPT_LLAMA_HOST ulpt-llama (the reference); libulpt.so.1 comes from LD_LIBRARY_PATH (the
Makefile sets all of them)."""
import http.client
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
import ulpt  # noqa: E402

SERVER = os.environ.get("ULPT_LLAMA_SERVER")
GGUF = os.environ.get("ULPT_LLAMA_GGUF")
HOST = os.environ.get("ULPT_LLAMA_HOST")
FIXTURES = os.path.join(ROOT, "tests", "tinylm", "fixtures")

pytestmark = pytest.mark.skipif(not SERVER or not GGUF or not HOST,
                                reason="run through `make check-llama`")

# name: (task, rows, seed); the prompts are untrained (the point is agreement)
PROMPTS = {"names4": ("names", 4, 1), "spam8": ("spam", 8, 2), "names12": ("names", 12, 3),
           "spam16": ("spam", 16, 4)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_prompt(path, rows, seed, model="tinylm"):
    p = ulpt.Prompt(n_tokens=rows, dim=128, rank=2, projection_seed=seed, init_seed=seed)
    p.set_meta("model", model)
    p.save(path)


def request(port, method, path, body=None, raw=None, timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    c.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    try:
        return r.status, json.loads(text)
    except ValueError:
        return r.status, text


class Server:
    def __init__(self, tmp, prompt_dir):
        self.port = free_port()
        self.log = open(tmp / "server.log", "w+")
        env = dict(os.environ, OMP_WAIT_POLICY="passive")
        # float32 K and V, no flash attention: as ulpt-llama decodes, so answers can agree
        self.proc = subprocess.Popen(
            [SERVER, "-m", GGUF, "--ulpt-dir", str(prompt_dir), "--host", "127.0.0.1",
             "--port", str(self.port), "-np", "4", "-c", "1024", "-t", "2", "--metrics",
             "-ctk", "f32", "-ctv", "f32", "-fa", "off", "--no-warmup"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                status, _ = request(self.port, "GET", "/health", timeout=5)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("the server did not come up:\n" + self.output())

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    d = tmp / "prompts"
    d.mkdir()
    for name, (_, rows, seed) in PROMPTS.items():
        make_prompt(d / f"{name}.ulpt", rows, seed)
    # refused at load, the server serving the others
    make_prompt(d / "foreign.ulpt", 4, 9, model="gpt2-small")
    with open(d / "names4.ulpt", "rb") as f:
        whole = f.read()
    with open(d / "truncated.ulpt", "wb") as f:
        f.write(whole[: len(whole) // 2])
    s = Server(tmp, d)
    yield s, d, tmp
    s.stop()


def fixture_texts(task):
    """The texts of a fixture task's test split, in file order."""
    with open(os.path.join(FIXTURES, task, "test.tsv"), encoding="utf-8") as f:
        f.readline()
        return [line.rstrip("\n").split("\t", 1)[1] for line in f if line.strip()]



def reference_scores(tmp, name, task):
    """ulpt-llama serve's label log-probabilities, one list per test example."""
    out = tmp / f"{name}.scores.jsonl"
    r = subprocess.run([HOST, "serve", "--gguf", GGUF, "--prompt", tmp / "prompts" / f"{name}.ulpt",
                        "--scores", out, "--threads", "1", os.path.join(FIXTURES, task)],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_WAIT_POLICY="passive"))
    assert r.returncode == 0, r.stderr
    with open(out) as f:
        return [json.loads(line)["scores"] for line in f]


def labels_of(task):
    with open(os.path.join(FIXTURES, task, "test.tsv"), encoding="utf-8") as f:
        return [n[0] for n in f.readline().rstrip("\n").split("\t")[1:]]


# An untrained prompt may make a byte that is no UTF-8 the likeliest token, which the
# server's output parser refuses (HTTP 500, as without a prompt): the grammar keeps the
# generated token printable.  n_probs reports the probabilities before sampling, grammar
# or not.
PRINTABLE = "root ::= [\\t\\n -~]"


def complete(port, name, text, path="/completion", n_probs=200):
    body = {"ulpt": name, "prompt": text, "n_predict": 1, "temperature": 0, "n_probs": n_probs,
            "grammar": PRINTABLE}
    status, r = request(port, "POST", path, body)
    assert status == 200, r
    return r


def label_logprobs(r, label_ids):
    top = {t["id"]: t["logprob"] for t in r["completion_probabilities"][0]["top_logprobs"]}
    return [top[i] for i in label_ids]


def token_id(port, piece):
    status, r = request(port, "POST", "/tokenize", {"content": piece})
    assert status == 200 and len(r["tokens"]) == 1, r
    return r["tokens"][0]


def test_bad_files_are_refused_at_load_by_name(served):
    s, _, _ = served
    status, r = request(s.port, "GET", "/ulpt/prompts")
    assert status == 200
    assert r["model"] == "tinylm"
    listed = {p["name"]: p for p in r["prompts"]}
    assert set(listed) == set(PROMPTS)
    for name, (_, rows, _) in PROMPTS.items():
        assert listed[name]["tokens"] == rows and listed[name]["model"] == "tinylm"
    log = s.output()
    refusals = [line for line in log.splitlines() if "ulpt: refused" in line]
    assert len(refusals) == 2, log[-3000:]
    foreign = next(line for line in refusals if "foreign.ulpt" in line)
    assert '"gpt2-small"' in foreign and '"tinylm"' in foreign
    assert any("truncated.ulpt" in line for line in refusals)


def test_label_probabilities_equal_ulpt_llama_serve(served):
    s, _, tmp = served
    for name, (task, _, _) in PROMPTS.items():
        ref = reference_scores(tmp, name, task)
        texts = fixture_texts(task)
        assert len(ref) == len(texts) >= 24
        ids = [token_id(s.port, c) for c in labels_of(task)]
        worst = 0.0
        for text, want in zip(texts, ref):
            r = complete(s.port, name, text)
            got = label_logprobs(r, ids)
            worst = max(worst, max(abs(a - b) for a, b in zip(got, want)))
            assert got.index(max(got)) == want.index(max(want)), (name, text)
            # the greedy token is the likeliest printable one: no label scores above it
            printable = [t for t in r["completion_probabilities"][0]["top_logprobs"]
                         if len(t["token"]) == 1 and (" " <= t["token"] <= "~" or t["token"] in "\t\n")]
            assert printable[0]["logprob"] >= max(got) - 1e-6
            assert r["completion_probabilities"][0]["id"] == printable[0]["id"]
        # float32 logits of differently shaped batches (the server decodes rows and text
        # apart; ulpt-llama sequences together): about 1e-5 of a logit's scale
        print("%s: worst |label log-prob difference| %.3g" % (name, worst))
        assert worst < 1e-3, (name, worst)


def test_every_endpoint_lays_the_text_out_alike(served):
    s, _, _ = served
    text = fixture_texts("names")[0]
    a = complete(s.port, "names12", text)
    b_status, b = request(s.port, "POST", "/v1/completions",
                          {"ulpt": "names12", "prompt": text, "max_tokens": 1, "temperature": 0,
                           "logprobs": 5, "grammar": PRINTABLE})
    c_status, c = request(s.port, "POST", "/v1/chat/completions",
                          {"ulpt": "names12", "messages": [{"role": "user", "content": text}],
                           "max_tokens": 1, "temperature": 0, "logprobs": True,
                           "top_logprobs": 5, "grammar": PRINTABLE})
    assert b_status == 200 and c_status == 200, (b, c)
    want = a["content"]
    assert b["choices"][0]["text"] == want
    assert c["choices"][0]["message"]["content"] == want
    lp = a["completion_probabilities"][0]["logprob"]
    assert abs(c["choices"][0]["logprobs"]["content"][0]["logprob"] - lp) < 1e-4
    # the prompt's rows are in front: another prompt, or none, answers otherwise
    other = complete(s.port, "spam16", text)
    plain_status, plain = request(s.port, "POST", "/completion",
                                  {"prompt": text + "\n", "n_predict": 1, "temperature": 0,
                                   "n_probs": 5, "grammar": PRINTABLE})
    assert plain_status == 200
    lps = {round(x["completion_probabilities"][0]["top_logprobs"][0]["logprob"], 5)
           for x in (a, other, plain)}
    assert len(lps) == 3, lps


def test_concurrent_requests_for_different_prompts_each_get_their_own_answer(served):
    s, _, _ = served
    work = []
    for name, (task, _, _) in PROMPTS.items():
        for text in fixture_texts(task)[:12]:
            work.append((name, text))
    single = {}
    for name, text in work:
        r = complete(s.port, name, text, n_probs=5)
        single[(name, text)] = (r["content"], r["completion_probabilities"][0]["top_logprobs"])
    got, errors = {}, []

    def client(items):
        try:
            for name, text in items:
                r = complete(s.port, name, text, n_probs=5)
                got[(name, text)] = (r["content"], r["completion_probabilities"][0]["top_logprobs"])
        except Exception as e:  # reported below, with the others
            errors.append(repr(e))

    # 16 clients, each with requests for every prompt interleaved
    threads = [threading.Thread(target=client, args=(work[i::16],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(got) == len(work) == 48
    for key, (content, top) in single.items():
        c2, t2 = got[key]
        assert c2 == content, key
        assert [x["id"] for x in t2] == [x["id"] for x in top], key
        # other slots in the same llama_decode change float32 rounding, not the answer
        assert max(abs(a["logprob"] - b["logprob"]) for a, b in zip(t2, top)) < 1e-3, key


def test_an_unknown_prompt_is_a_404_naming_it(served):
    s, _, _ = served
    for path in ["/completion", "/v1/completions"]:
        status, r = request(s.port, "POST", path, {"ulpt": "nosuch", "prompt": "Anna"})
        assert status == 404, r
        assert 'no prompt "nosuch"' in r["error"]["message"]
    status, r = request(s.port, "POST", "/v1/chat/completions",
                        {"ulpt": "nosuch", "messages": [{"role": "user", "content": "Anna"}]})
    assert status == 404 and 'no prompt "nosuch"' in r["error"]["message"], r
    status, r = request(s.port, "POST", "/completion", {"ulpt": 7, "prompt": "Anna"})
    assert status == 400 and "must be a prompt's name" in r["error"]["message"], r
    status, r = request(s.port, "POST", "/completion", {"ulpt": "names4", "prompt": ["Anna", "Bo"]})
    assert status == 400 and '"prompt" must be one string' in r["error"]["message"], r
    assert complete(s.port, "names4", "Anna")["content"]


def test_malformed_json_is_an_error_and_the_server_keeps_serving(served):
    s, _, _ = served
    status, r = request(s.port, "POST", "/completion", raw='{"ulpt": "names4", "prompt": ')
    assert status == 400 and "invalid JSON body" in r["error"]["message"], (status, r)
    assert complete(s.port, "names4", "Anna")["content"]


def test_oversized_text_is_refused_and_the_server_keeps_serving(served):
    s, _, _ = served
    status, r = request(s.port, "POST", "/completion",
                        {"ulpt": "spam16", "prompt": "x" * 5000, "n_predict": 1})
    assert status == 400, r
    assert "context size" in r["error"]["message"], r
    assert complete(s.port, "spam16", "win money now")["content"]


def test_forged_placeholders_are_refused(served):
    s, _, _ = served
    status, r = request(s.port, "POST", "/completion", {"prompt": [1, -2, -3, 65], "n_predict": 1})
    assert status == 400 and ">= 0" in r["error"]["message"], r


def test_prompts_are_loaded_and_removed_while_serving(served):
    s, d, _ = served
    make_prompt(d / "late.ulpt", 6, 11)
    errors, done = [], []
    stop = threading.Event()

    def steady():  # requests for a prompt that stays, while others come and go
        try:
            want = complete(s.port, "spam8", "free money")["content"]
            while not stop.is_set():
                assert complete(s.port, "spam8", "free money")["content"] == want
                done.append(1)
        except Exception as e:
            errors.append(repr(e))

    t = threading.Thread(target=steady)
    t.start()
    try:
        status, r = request(s.port, "POST", "/ulpt/prompts/load", {"name": "late"})
        assert status == 200 and r["tokens"] == 6, r
        first = complete(s.port, "late", "Anna")
        status, r = request(s.port, "DELETE", "/ulpt/prompts/late")
        assert status == 200, r
        status, r = request(s.port, "POST", "/completion", {"ulpt": "late", "prompt": "Anna"})
        assert status == 404, r
        status, r = request(s.port, "DELETE", "/ulpt/prompts/late")
        assert status == 404, r
        # loaded again (a new serial: nothing cached for the old one is taken for it)
        status, r = request(s.port, "POST", "/ulpt/prompts/load", {"name": "late"})
        assert status == 200, r
        again = complete(s.port, "late", "Anna")
        assert again["content"] == first["content"]
        assert abs(again["completion_probabilities"][0]["top_logprobs"][0]["logprob"] -
                   first["completion_probabilities"][0]["top_logprobs"][0]["logprob"]) < 1e-4
        # a damaged file is refused by name, the loaded prompts untouched
        shutil.copy(d / "truncated.ulpt", d / "broken.ulpt")
        status, r = request(s.port, "POST", "/ulpt/prompts/load", {"name": "broken"})
        assert status == 400 and "broken.ulpt" in r["error"]["message"], r
        status, r = request(s.port, "POST", "/ulpt/prompts/load", {"name": "../etc"})
        assert status == 400 and "not a prompt name" in r["error"]["message"], r
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert len(done) > 0


def test_metrics_count_requests_per_prompt(served):
    s, _, _ = served

    def count(name):
        status, text = request(s.port, "GET", "/metrics")
        assert status == 200
        for line in text.splitlines():
            if line.startswith('llamacpp:ulpt_requests_total{prompt="%s"}' % name):
                return int(float(line.split()[-1]))
        return None

    before = count("names12")
    assert before is not None
    for _ in range(3):
        complete(s.port, "names12", "Maria", n_probs=1)
    assert count("names12") == before + 3
    status, r = request(s.port, "GET", "/ulpt/prompts")
    assert next(p for p in r["prompts"] if p["name"] == "names12")["requests"] == before + 3


def test_a_prompt_costs_its_rows_once_per_slot(served):
    s, _, _ = served
    # the same prompt twice with different texts, pinned to one slot: the second request
    # finds BOS and the rows in the slot's cache
    body = {"ulpt": "spam16", "prompt": "hello there", "n_predict": 1, "id_slot": 0,
            "cache_prompt": True, "grammar": PRINTABLE}
    status, r = request(s.port, "POST", "/completion", body)
    assert status == 200, r
    body["prompt"] = "something else entirely"
    status, r = request(s.port, "POST", "/completion", body)
    assert status == 200, r
    assert r["timings"]["cache_n"] >= 16, r["timings"]  # (BOS, if any, and) the 16 rows
    # another prompt in that slot shares none of them: its rows are its own ids (at most its
    # own 4 rows come back, from the server's cache of earlier prompts)
    body["ulpt"] = "names4"
    status, r = request(s.port, "POST", "/completion", body)
    assert status == 200, r
    assert r["timings"]["cache_n"] <= 4, r["timings"]


def test_removing_a_prompt_with_requests_in_flight(served):
    """Requests for a prompt that is removed while they wait for a slot get an error naming
    the removal; those already running finish with the prompt's own answer; later ones are
    404s; the requests running for other prompts are not disturbed."""
    s, d, _ = served
    make_prompt(d / "leaving.ulpt", 12, 21)
    status, r = request(s.port, "POST", "/ulpt/prompts/load", {"name": "leaving"})
    assert status == 200, r
    texts = fixture_texts("names")[:8]
    want = {t: complete(s.port, "leaving", t, n_probs=1)["content"] for t in texts}
    long_body = {"ulpt": "spam8", "prompt": "free money", "n_predict": 200, "temperature": 0,
                 "ignore_eos": True, "grammar": PRINTABLE + "*"}
    status, r = request(s.port, "POST", "/completion", long_body)
    assert status == 200, r
    long_want = r["content"]
    results, errors = [], []

    def run(body, check):
        try:
            status, r = request(s.port, "POST", "/completion", body)
            results.append(check(status, r))
        except Exception as e:  # reported below
            errors.append(repr(e))

    def long_check(status, r):
        # (200 greedy tokens of an untrained prompt: batch-dependent float32 rounding may
        # flip a near tie late in the text, not the start)
        assert status == 200 and r["content"][:32] == long_want[:32], (status, r)
        return "other"

    def leaving_check(t):
        def check(status, r):
            if status == 200:
                assert r["content"] == want[t], t
                return "answered"
            assert status == 500 and "removed" in r["error"]["message"] or \
                status == 404 and "leaving" in r["error"]["message"], (status, r)
            return "refused %d" % status
        return check

    # every slot busy with a long request for another prompt, requests for "leaving" queued
    # behind them, then the removal; the timing is the client's, so a few rounds
    refused = answered = 0
    for _ in range(6):
        if refused:
            break
        status, r = request(s.port, "POST", "/ulpt/prompts/load", {"name": "leaving"})
        assert status == 200, r
        results.clear()
        busy = [threading.Thread(target=run, args=(long_body, long_check)) for _ in range(4)]
        for t in busy:
            t.start()
        time.sleep(0.05)
        queued = [threading.Thread(target=run, args=(
            {"ulpt": "leaving", "prompt": t, "n_predict": 1, "temperature": 0,
             "grammar": PRINTABLE}, leaving_check(t))) for t in texts]
        for t in queued:
            t.start()
        time.sleep(0.05)
        status, r = request(s.port, "DELETE", "/ulpt/prompts/leaving")
        assert status == 200, r
        for t in busy + queued:
            t.join()
        assert not errors, errors[:3]
        assert results.count("other") == 4 and len(results) == 12, results
        refused += results.count("refused 500")
        answered += results.count("answered")
    assert refused >= 1  # the case this test is for
    assert s.proc.poll() is None
    status, r = request(s.port, "POST", "/completion", {"ulpt": "leaving", "prompt": "x"})
    assert status == 404, r
    print("removal in flight: %d queued requests refused, %d answered" % (refused, answered))


def test_sigkill_during_an_add_loses_nothing(served, tmp_path):
    """A writer killed while saving a prompt into DIR leaves at most a temporary file beside
    it, which the server ignores; a server killed while loading a prompt starts again on the
    same DIR and serves every prompt as before (the directory is its only state)."""
    s, d, _ = served
    want = {name: complete(s.port, name, "Anna", n_probs=1)["content"] for name in PROMPTS}
    d2 = tmp_path / "prompts"
    d2.mkdir()
    for name in PROMPTS:
        shutil.copy(d / f"{name}.ulpt", d2 / f"{name}.ulpt")
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path.insert(0, %r); import ulpt\n"
        "p = ulpt.Prompt(n_tokens=64, dim=128, rank=2, projection_seed=5, init_seed=5)\n"
        "p.set_meta('model', 'tinylm')\n"
        "while True: p.save(%r)\n") % (os.path.join(ROOT, "bindings", "python"),
                                        str(d2 / "added.ulpt"))])
    time.sleep(1.5)
    writer.kill()
    writer.wait()
    assert (d2 / "added.ulpt").exists()  # whole: saves replace it by rename

    s2 = Server(tmp_path, d2)
    try:
        def add():  # the load in flight when SIGKILL arrives: its reply never comes
            try:
                request(s2.port, "POST", "/ulpt/prompts/load", {"name": "added"}, timeout=30)
            except OSError:
                pass
        killed = threading.Thread(target=add)
        killed.start()
        time.sleep(0.01)
        s2.proc.kill()
        s2.proc.wait()
        killed.join()
        s2.log.close()
    finally:
        if s2.proc.poll() is None:
            s2.stop()
    (tmp_path / "again").mkdir()
    s3 = Server(tmp_path / "again", d2)
    try:
        status, r = request(s3.port, "GET", "/ulpt/prompts")
        assert status == 200
        assert {p["name"] for p in r["prompts"]} == set(PROMPTS) | {"added"}, r
        assert "refused" not in s3.output()
        for name in PROMPTS:
            assert complete(s3.port, name, "Anna", n_probs=1)["content"] == want[name], name
        complete(s3.port, "added", "Anna", n_probs=1)
    finally:
        s3.stop()
