#!/usr/bin/env python3
"""Build the binary classification tasks tinylm's prompts are tuned on.

Reads the data sets `make data` fetched into examples/tinylm/cache and writes, for each
task, examples/tinylm/cache/tasks/<task>/{train,valid,test}.tsv.  docs/TINYLM.md describes
the tasks; the rules, in short:

  names  female vs male English first names (a name in both lists is dropped);
  spam   SpamAssassin ham vs spam: "subject | start of body";
  sotu   Democratic vs Republican State-of-the-Union sentences, split by speech so no
         speech is in two splits;
  lang   English vs French words (lower-case ASCII, in one language's list only).

Every text is bytes: control characters become spaces, runs of spaces collapse and the text
is cut to MAX_BYTES (never inside a UTF-8 sequence).  A line of a .tsv is
`label<TAB>text`, label 0 or 1; the first line, `#<TAB>word0<TAB>word1`, names the labels,
whose first bytes are the verbalizer.  The splits are fixed: names and spam examples are
ordered by the SHA-256 of "task NUL text", sotu's speeches by that of their file name and
their sentences by that of the text, so no random generator is involved, and each file's SHA-256 is checked against the value recorded here.

    tasks.py               build (make data runs it); --verbose: sizes and majority rates
    tasks.py --fixtures    also rewrite the committed fixtures tests/tinylm/fixtures/<task>/
                           ({train,test}.tsv: 24 examples each, both labels)
"""
import hashlib
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache")
OUT = os.path.join(CACHE, "tasks")
FIXTURES = os.path.join(HERE, "..", "..", "tests", "tinylm", "fixtures")
MAX_BYTES = 64
N_TEST, N_VALID, N_TRAIN = 600, 300, 2000
LABELS = {"names": ("female", "male"), "spam": ("ham", "spam"), "sotu": ("democrat", "republican"),
          "lang": ("english", "french")}

DIGESTS = {
    # from `tasks.py --print-digests`; a mismatch means the data or the rules changed
    "names/test": "42a20aa4c9087b8f173801c5f38e00b0895e143f009755c4c07225d4ca31a40b",
    "names/valid": "55e7dddc2d5810b77c00112b980d0d0163fb99f584e8b4c6ee3e91d31ed2eb8b",
    "names/train": "691616a1b7035dbd8bb83125ba2d056a78afe024ba76835becf7cc0b16bfb980",
    "spam/test": "c23c3dace8c5373f10ae428aa1c3599e3efeae529abf047d0628588e0336bfef",
    "spam/valid": "308acd51698ad725acf335f4e06194534ad214de6a323d4ff2a0f01ec7a766aa",
    "spam/train": "5450176b4d9096782fe717bd098c4b5dc91b76b26ca0f15a788d4249d64fc186",
    "sotu/train": "9306bdaecafa5e54059034801345e0e35c685d644ff6af1b7d5f7fb69e926b6b",
    "sotu/valid": "960bbe92a7840ebecc051a8db1d7c75e941f479bdf64706e00901dfecf1f2861",
    "sotu/test": "15a8a972bca050d39844148f4a6938bc54b51f6b7e2bab82aa81663f1f758bb1",
    "lang/test": "bced346a215fbfe4d3733579f79d84ca9861229b70451ead1e1bd754210241fc",
    "lang/valid": "4ce5bbfede6900ff0e2790d38af3fe23f684a387d03d125c75f72212bcc2a001",
    "lang/train": "d3e82db90b6bd4f1e22cdd5a2a5672150b8afb5d93b800d5eab7fa85dbfe335b",
}


def h(s):
    return hashlib.sha256(s.encode("utf-8", "surrogateescape")).hexdigest()


def clean(text):
    """Bytes of `text` without control characters, single-spaced, at most MAX_BYTES."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text)
    text = re.sub(r" {2,}", " ", text).strip()
    raw = text.encode("utf-8", "replace")[:MAX_BYTES]
    return raw.decode("utf-8", "ignore").strip()


def names():
    def read(which):
        with open(os.path.join(CACHE, which, "data", "names.txt"), encoding="utf-8") as f:
            return {line.strip() for line in f if line.strip()}
    female, male = read("female-first-names-en"), read("male-first-names-en")
    both = female & male
    return [(0, n) for n in sorted(female - both)] + [(1, n) for n in sorted(male - both)]


def email_text(raw):
    """Subject and the first words of the body of an RFC 822 message."""
    head, _, body = raw.partition("\n\n")
    subject = ""
    for line in head.split("\n"):
        if line.lower().startswith("subject:"):
            subject = line[8:].strip()
            break
    body = re.sub(r"<[^>]*>", " ", body)          # HTML tags carry no words
    body = re.sub(r"=\n|=[0-9A-F]{2}", " ", body)  # nor do quoted-printable escapes
    return clean(subject + " | " + body)


def spam():
    root = os.path.join(CACHE, "spam-assassin", "data")
    groups = {"easy-ham-1": 0, "easy-ham-2": 0, "hard-ham-1": 0, "spam-1": 1, "spam-2": 1}
    seen, out = set(), []
    for group, label in groups.items():
        for name in sorted(os.listdir(os.path.join(root, group))):
            if not name.endswith(".json"):
                continue
            with open(os.path.join(root, group, name), encoding="utf-8") as f:
                text = email_text(json.load(f)["text"])
            if len(text) >= 16 and text not in seen:
                seen.add(text)
                out.append((label, text))
    return out


def sotu():
    """(speech, label, sentence) for the Democratic and Republican speeches."""
    root = os.path.join(CACHE, "sotu", "data")
    out = []
    for name in sorted(os.listdir(root)):
        m = re.match(r"\d{4}_.*_(d|r)\.json$", name)
        if not m:
            continue
        with open(os.path.join(root, name), encoding="utf-8") as f:
            text = json.load(f)["text"]
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s) >= 40]
        # a dozen sentences per speech, so long speeches do not dominate
        for s in sorted(sentences, key=h)[:12]:
            out.append((name, 0 if m.group(1) == "d" else 1, clean(s)))
    return out


def lang():
    """English (0) and French (1) words: lower-case ASCII letters only (so an accent gives
    nothing away), 4 to 16 of them, in one list only; 1,450 of each, chosen by hash."""
    def read(name):
        with open(os.path.join(CACHE, name, "index.json"), encoding="utf-8") as f:
            return {w for w in json.load(f) if re.fullmatch(r"[a-z]{4,16}", w)}
    en, fr = read("english-words"), read("french-words")
    both = en & fr
    pick = lambda words: sorted(words - both, key=lambda w: h("pick\0" + w))[:1450]
    return [(0, w) for w in pick(en)] + [(1, w) for w in pick(fr)]


def split(task):
    if task == "sotu":
        rows = sotu()
        speeches = sorted({r[0] for r in rows}, key=h)
        # a fifth of the speeches for test, a tenth for validation, the rest for training
        n = len(speeches)
        part = {s: ("test" if i < n // 5 else "valid" if i < n * 3 // 10 else "train")
                for i, s in enumerate(speeches)}
        out = {"train": [], "valid": [], "test": []}
        for speech, label, text in rows:
            out[part[speech]].append((label, text))
        for k in out:
            out[k].sort(key=lambda r: h(r[1]))
        out["test"] = out["test"][:N_TEST]
        out["valid"] = out["valid"][:N_VALID]
        out["train"] = out["train"][:N_TRAIN]
        return out
    rows = {"names": names, "spam": spam, "lang": lang}[task]()
    rows.sort(key=lambda r: h(task + "\0" + r[1]))
    return {"test": rows[:N_TEST], "valid": rows[N_TEST:N_TEST + N_VALID],
            "train": rows[N_TEST + N_VALID:N_TEST + N_VALID + N_TRAIN]}


def tsv(task, rows):
    lines = ["#\t%s\t%s" % LABELS[task]] + ["%d\t%s" % (label, text) for label, text in rows]
    return ("\n".join(lines) + "\n").encode("utf-8")


def main():
    fixtures = "--fixtures" in sys.argv
    print_digests = "--print-digests" in sys.argv
    status = 0
    for task in LABELS:
        parts = split(task)
        os.makedirs(os.path.join(OUT, task), exist_ok=True)
        for part, rows in parts.items():
            blob = tsv(task, rows)
            path = os.path.join(OUT, task, part + ".tsv")
            with open(path + ".tmp", "wb") as f:
                f.write(blob)
            os.replace(path + ".tmp", path)
            digest = hashlib.sha256(blob).hexdigest()
            key = task + "/" + part
            if print_digests:
                print('    "%s": "%s",' % (key, digest))
            elif DIGESTS.get(key) != digest:
                print("tasks: %s.tsv has SHA-256 %s, not the recorded %s"
                      % (key, digest, DIGESTS.get(key)), file=sys.stderr)
                status = 1
            n1 = sum(r[0] for r in rows)
            if "--verbose" in sys.argv or print_digests:
                print("tasks: %-6s %-5s %4d examples, %4d %s / %4d %s, majority %.1f%%"
                      % (task, part, len(rows), len(rows) - n1, LABELS[task][0], n1,
                         LABELS[task][1], 100.0 * max(n1, len(rows) - n1) / len(rows)))
        if fixtures:
            # 24 training and 24 test examples, half of each label where possible
            def pick(rows, k):
                zeros = [r for r in rows if r[0] == 0][:k // 2]
                ones = [r for r in rows if r[0] == 1][:k - len(zeros)]
                return sorted(zeros + ones, key=lambda r: h(r[1]))
            os.makedirs(os.path.join(FIXTURES, task), exist_ok=True)
            for part in ("train", "test"):
                with open(os.path.join(FIXTURES, task, part + ".tsv"), "wb") as f:
                    f.write(tsv(task, pick(parts[part], 24)))
    if status == 0:
        print("tasks: %s built in %s, checksums match" % (", ".join(LABELS), os.path.relpath(OUT)))
    sys.exit(status)


if __name__ == "__main__":
    main()
