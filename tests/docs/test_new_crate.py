"""docs/RUST.md from a new crate: what a reader does after `cargo new`, by the doc alone.

The crate lives outside the checkout (a scratch directory); its Cargo.toml dependencies,
its build.rs and its .cargo/config.toml are the blocks of docs/RUST.md, with
/path/to/libulpt standing for this checkout; its main is the doc's first Rust example.
It must build offline with Debian's cargo and its binary must run with an empty
environment: the rpath comes from build.rs through DEP_ULPT_LIB_DIR, nothing from
LD_LIBRARY_PATH.
"""
import os
import re
import subprocess

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CARGO = "/usr/bin/cargo"


def blocks(lang):
    text = open(os.path.join(ROOT, "docs", "RUST.md"), encoding="utf-8").read()
    return re.findall(r"^```%s\n(.*?)^```" % lang, text, re.M | re.S)


def the_block(lang, first):
    found = [b for b in blocks(lang) if b.lstrip().startswith(first)]
    assert len(found) == 1, "docs/RUST.md: one ```%s block starting %r, found %d" % (
        lang, first, len(found))
    return found[0].replace("/path/to/libulpt", ROOT)


@pytest.mark.skipif(not os.path.exists(CARGO), reason="Debian's cargo is not installed")
def test_new_crate_builds_offline_and_runs_without_environment(tmp_path):
    crate = tmp_path / "newcrate"
    (crate / "src").mkdir(parents=True)
    (crate / ".cargo").mkdir()
    deps = [b for b in blocks("toml") if "ulpt-sys = " in b]
    assert len(deps) == 1, "docs/RUST.md: the dependencies naming ulpt-sys moved"
    (crate / "Cargo.toml").write_text(
        '[package]\nname = "newcrate"\nversion = "0.1.0"\nedition = "2021"\n\n'
        + deps[0].replace("/path/to/libulpt", ROOT))
    (crate / "build.rs").write_text(the_block("rust", "// build.rs"))
    (crate / ".cargo" / "config.toml").write_text(the_block("toml", "[source.crates-io]"))
    example = the_block("rust", "use ulpt::")
    uses = "".join(l + "\n" for l in example.splitlines() if l.startswith("use "))
    body = "".join("    " + l + "\n" for l in example.splitlines() if not l.startswith("use "))
    (crate / "src" / "main.rs").write_text(
        uses + "\nfn main() -> Result<(), Box<dyn std::error::Error>> {\n" + body
        + '    println!("libulpt {}: saved and served", ulpt::version_string());\n    Ok(())\n}\n')

    # The reader's environment, less what would point at this checkout or its build.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ULPT_", "DEP_ULPT")) and k not in ("LD_LIBRARY_PATH", "CARGO_TARGET_DIR")}
    build = subprocess.run([CARGO, "build", "-q"], cwd=crate, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=900)
    assert build.returncode == 0, build.stdout[-4000:]

    run = subprocess.run(["env", "-i", "./target/debug/newcrate"], cwd=crate,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    assert re.search(r"^libulpt 1\.\d+\.\d+: saved and served$", run.stdout, re.M), run.stdout
    assert re.search(r"^step 0: loss \d", run.stdout, re.M), run.stdout
