"""Docs that run: every code block of README.md and docs/*.md, as a reader would copy it.

Each block carries a marker, an HTML comment on the line before it (a blank line between
is allowed), that says how it runs or why it does not:

    <!-- doctest: KIND [key=value ...] [reason] -->

    sh        run with bash -e in a scratch directory that mirrors the checkout (its
              top-level entries linked, so `examples/...` paths work and new files stay
              out of the tree); /usr/bin comes first on PATH; as root, mpirun is allowed
    c         a complete program: compiled with cc -std=c11 -Wall -Werror against
              include/ and the build tree's lib/libulpt.so, then run (exit status 0)
    python    run with /usr/bin/python3 and the package of this checkout
    cargo     a Cargo.toml fragment: the manifest of the next rust block, with
              /path/to/libulpt standing for this checkout
    rust      the body of `fn main() -> Result<(), Box<dyn std::error::Error>>`, built
              offline with Debian's cargo against the crates of bindings/rust and run
              with LD_LIBRARY_PATH naming the build tree's lib/
    output    what the block before printed (stdout, then stderr), compared line by line;
              a line "..." (or "…") stands for any number of lines, "…" inside a line for
              any text (a process id), and lines before the first expected one are
              passed over.  `cmd="..."` runs that shell command instead of
              taking the block before's output.  `machine=REGEX`: numbers matching it are
              the machine's (times, shares) and not compared; the doc must say so
    skip      not run; the rest of the comment says why (a formula, a diagram, pseudo-code,
              a fragment of a larger program that is run elsewhere, a root-only command)

    Values with spaces are quoted, "..." or '...'.
    keys:  continue    (python, sh) run after the previous block of the same kind in the
                       same doc, as one program: later snippets use earlier names
           needs=data  needs the task files of `make data` (downloaded); run only when
                       examples/tinylm/cache/tasks exists, otherwise reported as not run
           needs=install  (sh) runs after `make install PREFIX=SCRATCH`, with pkg-config
                       finding that copy and the doc's C program before it as app.c
           needs=llama needs the llama.cpp build: run by `make check-llama` (which sets
                       ULPT_LLAMA_HOST), reported as not run by `make check`
           needs=long  takes minutes: run when ULPT_DOCS_LONG=1 (`make check-docs
                       ULPT_DOCS_LONG=1`).  Several needs: needs=data,long
           timeout=S   seconds (default 120)
           path=DIR    (sh) the checkout's DIR comes first on PATH, as an installed
                       command would be found (path=tools: the ulpt tool)
           setup="..." (sh) a command run first, to make the files the block names
           status=N    the exit status the block ends with when it works (default 0)

A block without a marker fails: say how it runs, or why it does not.  A run block fails
when its program fails; an output block when a line differs.  The figures a cheap command
can reproduce that are written in prose are checked by the test_figure_* tests below.

`make check-docs` (a step of `make check`) runs this file; the summary line counts the
blocks run, not run (needs), skipped (by marker) and failed.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DOCS = ["README.md"] + sorted("docs/" + f for f in os.listdir(os.path.join(ROOT, "docs"))
                              if f.endswith(".md"))
PYTHON = "/usr/bin/python3"
CARGO = "/usr/bin/cargo"
MARKER = re.compile(r"^<!--\s*doctest:\s*(.*?)\s*-->\s*$")
KINDS = {"sh", "c", "python", "cargo", "rust", "output", "skip"}
HAS_DATA = os.path.isdir(os.path.join(ROOT, "examples", "tinylm", "cache", "tasks"))
HAS_LLAMA = bool(os.environ.get("ULPT_LLAMA_HOST"))
LONG = os.environ.get("ULPT_DOCS_LONG") == "1"


class Block:
    def __init__(self, doc, line, text, marker):
        self.doc, self.line, self.text = doc, line, text
        self.kind, self.keys, self.reason = None, {}, ""
        if marker is not None:
            words = marker.split(None, 1)
            self.kind = words[0] if words else None
            rest = words[1] if len(words) > 1 else ""
            while True:  # key=value, key="a value", or continue, then the reason
                m = re.match(r'([a-z]+)=(?:"([^"]*)"|\'([^\']*)\'|(\S+))\s*|(continue)\b\s*', rest)
                if not m:
                    break
                if m.group(5):
                    self.keys["continue"] = True
                else:
                    self.keys[m.group(1)] = next(g for g in m.group(2, 3, 4) if g is not None)
                rest = rest[m.end():]
            self.reason = rest.strip()

    @property
    def name(self):
        return "%s:%d" % (self.doc, self.line)


def parse(doc):
    """The code blocks of a Markdown file, fenced or indented, each with its marker."""
    lines = open(os.path.join(ROOT, doc), encoding="utf-8").read().split("\n")
    blocks, i, in_list = [], 0, False

    def marker_before(k):
        k -= 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        m = MARKER.match(lines[k]) if k >= 0 else None
        return m.group(1) if m else None

    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^(\s*)(```+|~~~+)", line)
        if fence:
            indent, mark = fence.groups()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(mark):
                j += 1
            text = "\n".join(l[len(indent):] for l in lines[i + 1:j])
            blocks.append(Block(doc, i + 1, text, marker_before(i)))
            i = j + 1
            continue
        # an indented block starts after a blank line, outside a list item's paragraphs
        if re.match(r"^\s*([-*+]|\d+\.)\s", line):
            in_list = True
        elif line.strip() and not line.startswith(" "):
            in_list = False
        after = i == 0 or not lines[i - 1].strip() or MARKER.match(lines[i - 1])
        if line.startswith("    ") and after and not in_list:
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or
                                      (not lines[j].strip() and j + 1 < len(lines) and
                                       lines[j + 1].startswith("    "))):
                j += 1
            blocks.append(Block(doc, i + 1, "\n".join(l[4:] for l in lines[i:j]),
                                marker_before(i)))
            i = j
            continue
        i += 1
    return blocks


ALL = [b for d in DOCS for b in parse(d)]


# ---- running ----------------------------------------------------------------------------

def environment():
    env = dict(os.environ)
    env["PATH"] = "/usr/bin:/bin:" + env.get("PATH", "")
    env["PYTHONPATH"] = os.path.join(ROOT, "bindings", "python")
    env["OMPI_ALLOW_RUN_AS_ROOT"] = env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    env["OMP_WAIT_POLICY"] = "passive"
    return env


def mirror(tmp):
    """A scratch directory whose top-level entries link to the checkout's."""
    for entry in os.listdir(ROOT):
        if entry not in (".git",):
            os.symlink(os.path.join(ROOT, entry), os.path.join(tmp, entry))
    return tmp


def run(argv, cwd, timeout, stdin=None):
    p = subprocess.run(argv, cwd=cwd, env=environment(), input=stdin, text=True,
                       capture_output=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def program(block):
    """The block's source, after the earlier blocks it continues."""
    if not block.keys.get("continue"):
        return block.text
    same = [b for b in ALL if b.doc == block.doc and b.kind == block.kind and b.line < block.line]
    assert same, "%s: `continue` but no earlier %s block" % (block.name, block.kind)
    return program(same[-1]) + "\n" + block.text


def run_sh(block, tmp, timeout):
    script = program(block)
    if block.keys.get("needs") == "install":
        prefix = os.path.join(tmp, "prefix")
        rc, out = run(["make", "-s", "--no-print-directory", "install", "PREFIX=" + prefix],
                      ROOT, timeout)
        if rc:
            return rc, "make install failed:\n" + out
        programs = [b for b in ALL if b.doc == block.doc and b.kind == "c" and b.line < block.line]
        assert programs, "%s: needs=install but no C program before it" % block.name
        with open(os.path.join(tmp, "app.c"), "w") as f:
            f.write(programs[-1].text + "\n")
        script = "export PKG_CONFIG_PATH=%s/lib/pkgconfig\n%s" % (shlex.quote(prefix), script)
    if "setup" in block.keys:
        script = block.keys["setup"] + "\n" + script
    if "path" in block.keys:
        script = "export PATH=%s:$PATH\n%s" % (shlex.quote(os.path.join(ROOT, block.keys["path"])),
                                                script)
    return run(["bash", "-e", "-o", "pipefail", "-c", script], mirror(tmp), timeout)


def run_python(block, tmp, timeout):
    path = os.path.join(tmp, "block.py")
    with open(path, "w") as f:
        f.write(program(block))
    return run([PYTHON, path], tmp, timeout)


def run_c(block, tmp, timeout):
    src, exe = os.path.join(tmp, "block.c"), os.path.join(tmp, "block")
    with open(src, "w") as f:
        f.write(block.text + "\n")
    lib = os.path.join(ROOT, "lib")
    rc, out = run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I" + os.path.join(ROOT, "include"),
                   "-o", exe, src, "-L" + lib, "-lulpt", "-Wl,-rpath," + lib, "-lm"], tmp, timeout)
    if rc:
        return rc, "does not compile:\n" + out
    return run([exe], tmp, timeout)


def run_rust(block, tmp, timeout):
    manifests = [b for b in ALL if b.doc == block.doc and b.kind == "cargo" and b.line < block.line]
    assert manifests, "%s: a rust block needs a cargo block before it" % block.name
    manifest = manifests[-1].text.replace("/path/to/libulpt", ROOT)
    if "[dependencies]" not in manifest:
        manifest = "[dependencies]\n" + manifest
    # inside bindings/rust, so that its .cargo/config.toml (Debian's crates, offline) applies
    os.makedirs(os.path.join(ROOT, "bindings", "rust", "target"), exist_ok=True)
    crate = tempfile.mkdtemp(prefix="doctest-", dir=os.path.join(ROOT, "bindings", "rust", "target"))
    try:
        os.makedirs(os.path.join(crate, "src"))
        with open(os.path.join(crate, "Cargo.toml"), "w") as f:
            f.write('[package]\nname = "doctest"\nversion = "0.0.0"\nedition = "2021"\n\n'
                    '[workspace]\n\n' + manifest + "\n")
        with open(os.path.join(crate, "src", "main.rs"), "w") as f:
            f.write("#[allow(unused)]\nfn main() -> Result<(), Box<dyn std::error::Error>> {\n"
                    + block.text + "\n    Ok(())\n}\n")
        env_target = os.path.join(ROOT, "bindings", "rust", "target")
        # run with LD_LIBRARY_PATH, one of docs/RUST.md's ways to find the library
        lib = os.path.join(ROOT, "lib")
        return run(["env", "CARGO_TARGET_DIR=" + env_target, "ULPT_LIB_DIR=" + lib,
                    "LD_LIBRARY_PATH=" + lib,
                    "ULPT_INCLUDE_DIR=" + os.path.join(ROOT, "include"), CARGO, "run", "-q",
                    "--offline", "--manifest-path", os.path.join(crate, "Cargo.toml")], crate, timeout)
    finally:
        shutil.rmtree(crate, ignore_errors=True)


RUNNERS = {"sh": run_sh, "python": run_python, "c": run_c, "rust": run_rust}
OUTPUTS = {}  # block name -> what it printed, for the output block after it


def compare(expected, actual, machine):
    """None if every expected line is in actual in order ('...' skips lines), else why."""
    def norm(line):
        line = line.rstrip()
        return re.sub(machine, "#", line) if machine else line

    def same(want, got):
        if "…" not in want:
            return want == got
        return re.fullmatch(".*".join(re.escape(part) for part in want.split("…")), got)

    want = [norm(l) for l in expected.split("\n") if l.strip()]
    got = [norm(l) for l in actual.split("\n")]
    k = 0
    while k < len(got) and not same(want[0], got[k]):  # lines before the first expected one
        k += 1
    skipping = False
    for w in want:
        if w.strip() in ("...", "…"):
            skipping = True
            continue
        while skipping and k < len(got) and not same(w, got[k]):
            k += 1
        if k >= len(got) or not same(w, got[k]):
            return "expected  %r\nbut got   %r" % (w, got[k] if k < len(got) else "(end)")
        k += 1
        skipping = False
    return None


def not_run(block):
    for need in filter(None, block.keys.get("needs", "").split(",")):
        if need == "data" and not HAS_DATA:
            return "needs the task files of `make data`"
        if need == "llama" and not HAS_LLAMA:
            return "needs llama.cpp: run by `make check-llama`"
        if need == "long" and not LONG:
            return "takes minutes: run with ULPT_DOCS_LONG=1"
    return None


# Blocks of docs other changes are fixing, by (doc, first line): expected to fail until
# then, and strict, so that a fixed block fails here until its line is removed.
KNOWN = {
}


@pytest.mark.parametrize("block", ALL, ids=[b.name for b in ALL])
def test_block(block, tmp_path, request):
    known = KNOWN.get((block.doc, block.text.split("\n")[0]))
    if known:
        request.applymarker(pytest.mark.xfail(reason=known, strict=True))
    assert block.kind is not None, (
        "%s has no <!-- doctest: ... --> marker; say how it runs or why it does not:\n%s"
        % (block.name, block.text[:300]))
    assert block.kind in KINDS, "%s: unknown kind %r" % (block.name, block.kind)
    if block.kind == "skip":
        assert block.reason, "%s: skip needs a reason" % block.name
        pytest.skip("marked: " + block.reason)
    if block.kind == "cargo":
        pytest.skip("a manifest, built with the rust block after it")
    why = not_run(block)
    if why:
        pytest.skip(why)
    timeout = float(block.keys.get("timeout", 120))
    if block.kind == "output":
        if "cmd" in block.keys:
            rc, out = run(["bash", "-e", "-o", "pipefail", "-c", block.keys["cmd"]],
                          mirror(str(tmp_path)), timeout)
            assert rc == 0, "%s: `%s` failed (%d):\n%s" % (block.name, block.keys["cmd"], rc, out[-3000:])
        else:
            before = [b for b in ALL if b.doc == block.doc and b.line < block.line
                      and b.kind in RUNNERS]
            assert before, "%s: an output block with nothing before it" % block.name
            out = OUTPUTS.get(before[-1].name)
            assert out is not None, "%s: the block before (%s) did not run" % (block.name,
                                                                                 before[-1].name)
        why = compare(block.text, out, block.keys.get("machine"))
        assert why is None, "%s: the output differs:\n%s\n--- all of it:\n%s" % (
            block.name, why, out[-3000:])
        return
    rc, out = RUNNERS[block.kind](block, str(tmp_path), timeout)
    OUTPUTS[block.name] = out
    status = int(block.keys.get("status", 0))
    assert rc == status, "%s (%s) ended with status %d, not %d:\n%s" % (
        block.name, block.kind, rc, status, out[-3000:])


# ---- figures written in prose that a cheap command reproduces ---------------------------

def read(doc):
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        return " ".join(f.read().split())  # one line: figures may wrap


def number(text):
    return int(text.replace(",", ""))


def ulpt_module():
    sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
    import ulpt
    return ulpt


def test_figure_headline_prompt_size_and_file_bytes(tmp_path):
    """README: the 100 x 4096 rank-2 prompt's parameters, and the files a reader's new
    prompt makes (f32 and f16), against the vanilla prompt's bytes."""
    text = read("README.md")
    m = re.search(r"A 100-token prompt for a 4096-wide model trains ([\d,]+) numbers instead "
                  r"of ([\d,]+) \((\d+)%\)", text)
    assert m, "README: the headline sentence moved; update this test"
    ulpt = ulpt_module()
    p = ulpt.Prompt(n_tokens=100, dim=4096)
    assert number(m.group(1)) == p.num_params
    assert number(m.group(2)) == 100 * 4096
    assert int(m.group(3)) == round(100 * p.num_params / (100 * 4096))
    m = re.search(r"headline prompt \(100 tokens, rank 2, dim 4096\) takes ([\d,]+) bytes as f32 "
                  r"and ([\d,]+) as f16, against ([\d,]+) for a vanilla soft prompt", text)
    assert m, "README: the file-size sentence moved; update this test"
    p.save(str(tmp_path / "a.ulpt"))
    p.save(str(tmp_path / "b.ulpt"), dtype="f16")
    assert number(m.group(1)) == os.path.getsize(tmp_path / "a.ulpt")
    assert number(m.group(2)) == os.path.getsize(tmp_path / "b.ulpt")
    assert number(m.group(3)) == 100 * 4096 * 4


def test_figure_tinylm_parameters():
    """README and TINYLM.md: tinylm's parameter count, as the shipped weights have it."""
    rc, out = run([os.path.join(ROOT, "examples", "tinylm", "tlm"), "info",
                   os.path.join(ROOT, "examples", "tinylm", "tinylm.tlm")], ROOT, 60)
    assert rc == 0, out
    params = int(re.search(r"(\d+) parameters", out).group(1))
    assert "a %.2f M-parameter" % (params / 1e6) in read("README.md")
    assert "(%.2f M parameters" % (params / 1e6) in read("README.md")


def test_figure_check_counts():
    """README: how many checks the example hosts' suite has (every TEST() in tests/tinylm)."""
    counts = {}
    for name in ("test_tinylm.c", "test_common.c"):
        with open(os.path.join(ROOT, "tests", "tinylm", name)) as f:
            counts[name] = len(re.findall(r"^TEST(?:_LOOP)?\(", f.read(), re.M))
    text = read("README.md")
    m = re.search(r"(\d+) checks for the example hosts \((\d+) for tinylm, (\d+) for "
                  r"`examples/common`\)", text)
    assert m, "README: the sentence on the example hosts' checks moved; update this test"
    assert [int(g) for g in m.groups()] == [sum(counts.values()), counts["test_tinylm.c"],
                                            counts["test_common.c"]]


def test_figure_make_check_steps():
    """README: the steps of `make check`, in the order make runs them."""
    rc, out = run(["make", "-s", "--no-print-directory", "-pn", "check-run"], ROOT, 60)
    steps = re.search(r"^CHECK_STEPS :?= (.*)$", out, re.M).group(1).split()
    text = read("README.md")
    m = re.search(r"`make check` runs, in this order: (.*?)\. ", text)
    assert m, "README: the list of make check's steps moved; update this test"
    assert re.findall(r"`(check-[a-z]+)`", m.group(1)) == steps
