"""A bounded load test of llama-server with ULPT prompts (make llama-serve-bench; not a
timed test): C concurrent clients on loopback send R requests, each for one of P prompts of
the bank, and the same requests again as plain text of equal length (each "tenant" its own
text prefix in place of the rows) and all for one prompt; throughput and latency
percentiles of each, after one first request per prompt (or tenant prefix), which is
reported apart, with the number of tokens the server evaluated a request.  Each set of
runs is done twice, on a fresh server each time: with texts drawn from 8 names (a slot's
cached text often matches the next request's, most of all when every request has the same
prompt) and with a distinct text for every request (only the prompt can be reused).  Then
the server's resident memory with 0 and with N prompts loaded, and the bytes per prompt.  One JSON line per measurement on stdout.

    bench_server.py --server BIN --gguf M.gguf [--clients 64] [--prompts 1000]
                    [--requests 3000] [--rss-prompts 10000] [--rows 8]
"""
import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bindings", "python"))
import ulpt  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(conn, path, body):
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError("%s: %d %s" % (path, r.status, data[:200]))
    return json.loads(data)


class Server:
    def __init__(self, binary, gguf, prompt_dir, slots, log):
        self.port = free_port()
        env = dict(os.environ, OMP_WAIT_POLICY="passive")
        self.proc = subprocess.Popen(
            [binary, "-m", gguf, "--ulpt-dir", prompt_dir, "--host", "127.0.0.1",
             "--port", str(self.port), "-np", str(slots), "-c", str(256 * slots), "-t", "2",
             "--no-warmup"], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("llama-server exited with %d" % self.proc.returncode)
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/health")
                ok = c.getresponse().status == 200
                c.close()
                if ok:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("llama-server did not come up")

    def rss(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def make_prompts(d, n, rows):
    for i in range(n):
        p = ulpt.Prompt(n_tokens=rows, dim=128, rank=2, projection_seed=1, init_seed=i + 1)
        p.set_meta("model", "tinylm")
        p.save(os.path.join(d, "p%05d.ulpt" % i))


def load(port, bodies, clients):
    """Sends bodies from `clients` threads; throughput and latency percentiles."""
    lat, errors, evaluated, lock = [], [], [], threading.Lock()
    it = iter(bodies)

    def client():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                body = next(it, None)
            if body is None:
                break
            t0 = time.perf_counter()
            try:
                answer = post(c, "/completion", body)
            except Exception as e:  # counted, and the connection renewed
                errors.append(repr(e))
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                continue
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                evaluated.append(answer.get("timings", {}).get("prompt_n", 0))
        c.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
    return {"requests": len(lat), "errors": len(errors), "seconds": round(wall, 3),
            "requests_per_s": round(len(lat) / wall, 1), "p50_ms": round(1000 * pct(0.50), 1),
            "p99_ms": round(1000 * pct(0.99), 1),
            "evaluated_per_request": round(sum(evaluated) / max(1, len(evaluated)), 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rss-prompts", type=int, default=10000)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--slots", type=int, default=8)
    a = ap.parse_args()
    rng = random.Random(1)
    names = ["Anna", "Bartholomew", "Chen", "Dolores", "Ezekiel", "Fatima", "Giovanni", "Hana"]
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "bank")
        os.mkdir(d)
        make_prompts(d, a.prompts, a.rows)
        log = open(os.path.join(tmp, "server.log"), "w")
        who = [rng.randrange(a.prompts) for _ in range(a.requests)]
        # "names": the text after the prompt is one of 8 names, so a slot's cached text
        # often matches the next request's too; "distinct": each request's text is its own
        # (random letters, the same lengths), so only a prompt's rows can be reused
        named = [rng.choice(names) for _ in range(a.requests)]
        letters = lambda n: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))  # noqa: E731
        distinct = [letters(len(t)) for t in named]
        # printable output: a byte that is no UTF-8 fails the server's output parser
        base = {"n_predict": 1, "temperature": 0, "cache_prompt": True,
                "grammar": "root ::= [\\t\\n -~]"}
        # each tenant's plain-text stand-in for its rows: as many byte tokens; the server
        # puts a prompt's separator ("\n") after a ULPT request's text, the plain text has it
        prefix = [letters(a.rows) for _ in range(a.prompts)]
        for text_name, texts in (("names", named), ("distinct", distinct)):
            # each run first sends one request per distinct prefix (the "first request of
            # each" prompt or tenant, reported as its own line), then the measured requests
            runs = {
                "ulpt_%d_prompts" % a.prompts: (
                    [dict(base, ulpt="p%05d" % w, prompt="Anna") for w in range(a.prompts)],
                    [dict(base, ulpt="p%05d" % w, prompt=t) for w, t in zip(who, texts)]),
                "plain_text_equal_length": (
                    [dict(base, prompt=prefix[w] + "Anna\n") for w in range(a.prompts)],
                    [dict(base, prompt=prefix[w] + t + "\n") for w, t in zip(who, texts)]),
                "ulpt_one_prompt": (
                    [dict(base, ulpt="p00000", prompt="Anna")],
                    [dict(base, ulpt="p00000", prompt=t) for t in texts]),
            }
            s = Server(a.server, a.gguf, d, a.slots, log)  # a fresh server for each text set
            try:
                for name, (first, bodies) in runs.items():
                    for label, todo in (("first_requests", first), ("after_first", bodies)):
                        r = load(s.port, todo, a.clients)
                        r.update(run=name, texts=text_name, phase=label, clients=a.clients,
                                 slots=a.slots, rows=a.rows, prompts_in_bank=a.prompts)
                        print(json.dumps(r), flush=True)
            finally:
                s.stop()
        # resident memory: the bank's share, with no prompt and with many
        empty = os.path.join(tmp, "empty")
        os.mkdir(empty)
        many = os.path.join(tmp, "many")
        os.mkdir(many)
        make_prompts(many, a.rss_prompts, a.rows)
        rss = {}
        for label, pd in (("none", empty), ("many", many)):
            s = Server(a.server, a.gguf, pd, a.slots, log)
            try:
                time.sleep(1)
                rss[label] = s.rss()
            finally:
                s.stop()
        print(json.dumps({"run": "rss", "prompts": a.rss_prompts, "rows": a.rows,
                          "rss_no_prompts": rss["none"], "rss_with_prompts": rss["many"],
                          "bytes_per_prompt": round((rss["many"] - rss["none"]) / a.rss_prompts)}),
              flush=True)


if __name__ == "__main__":
    main()
