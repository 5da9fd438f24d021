"""The `ulpt` command: every subcommand on real files, its errors and exit statuses."""
import json
import os
import struct
import subprocess

import numpy as np
import pytest

import ulpt

HERE = os.path.dirname(os.path.abspath(__file__))

TOOL = os.path.join(HERE, "..", "..", "tools", "ulpt")


def run(*args):
    return subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def prompt_file(tmp_path):
    p = ulpt.Prompt(n_tokens=10, dim=64, rank=2, projection_seed=3)
    p.params[:] = np.random.default_rng(0).standard_normal(p.num_params).astype(np.float32)
    p.set_meta("model", 'tiny "quoted" model')
    p.set_meta("task", "spam")
    path = tmp_path / "p.ulpt"
    p.save(path)
    return path, p


def test_help_on_every_subcommand():
    for cmd in ["info", "verify", "convert", "export-peft", "materialise", "diff"]:
        r = run(cmd, "--help")
        assert r.returncode == 0 and r.stdout.startswith("usage: ulpt " + cmd)
    assert run("--help").returncode == 0
    r = run("frobnicate")
    assert r.returncode == 2 and "unknown command" in r.stderr


def test_info_reports_shape_params_dtype_size_meta_checksum(prompt_file):
    path, p = prompt_file
    r = run("info", path)
    assert r.returncode == 0
    out = r.stdout
    assert "10 tokens x rank 2 -> dim 64" in out
    assert "%d trainable" % p.num_params in out and "vanilla prompt tuning: 640" in out
    assert "f32" in out and "%d bytes in all" % os.path.getsize(path) in out
    assert "checksum:     ok" in out and "meta task     spam" in out


def test_verify_exit_status_tells_good_from_damaged(prompt_file, tmp_path):
    path, _ = prompt_file
    assert run("verify", path).returncode == 0
    bad = tmp_path / "bad.ulpt"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x40
    bad.write_bytes(bytes(data))
    r = run("verify", path, bad)
    assert r.returncode == 1
    assert "p.ulpt: ok" in r.stdout and "bad.ulpt: corrupt data" in r.stderr


def test_convert_to_f16_halves_and_keeps_values(prompt_file, tmp_path):
    path, p = prompt_file
    out = tmp_path / "h.ulpt"
    assert run("convert", "--dtype", "f16", path, out).returncode == 0
    assert ulpt.inspect(out).dtype == ulpt.DTYPE_F16
    q = ulpt.Prompt.load(out)
    np.testing.assert_allclose(q.params, p.params.astype(np.float16).astype(np.float32))
    assert q.meta == p.meta
    r = run("convert", "--dtype", "f8", path, out)
    assert r.returncode == 2 and "unknown dtype" in r.stderr


def test_convert_takes_the_prompt_out_of_a_checkpoint_but_never_over_it(prompt_file, tmp_path):
    path, p = prompt_file
    opt = ulpt.Optimizer(p, lr=0.1)
    p.grads[:] = 0.5
    opt.step()
    ckpt = tmp_path / "c.ulpt"
    opt.save_checkpoint(ckpt)
    before = ckpt.read_bytes()
    r = run("convert", "--dtype", "f32", ckpt, ckpt)
    assert r.returncode == 1 and "optimizer state" in r.stderr
    assert ckpt.read_bytes() == before
    out = tmp_path / "prompt-only.ulpt"
    r = run("convert", "--dtype", "f32", ckpt, out)
    assert r.returncode == 0 and "prompt only" in r.stderr
    assert ulpt.inspect(out).kind == ulpt.FILE_PROMPT
    np.testing.assert_array_equal(ulpt.Prompt.load(out).params, p.params)


def test_export_peft_config_is_valid_json_for_any_model_name(tmp_path):
    p = ulpt.Prompt(n_tokens=2, dim=8)
    p.set_meta("model", "caf\u00e9 \t \"x\" \u2028 end")
    path = tmp_path / "m.ulpt"
    p.save(path)
    data = bytearray(path.read_bytes())
    assert run("export-peft", path, tmp_path / "a").returncode == 0
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text(encoding="utf-8"))
    assert cfg["base_model_name_or_path"] == "caf\u00e9 \t \"x\" \u2028 end"
    # a name that is not UTF-8 cannot get into a file: the library refuses to set it
    # (ULPT_ERR_INVALID) and keeps the old one, which exports as before
    with pytest.raises(ulpt.InvalidArgumentError):
        p.meta_bytes[b"model"] = b"bad \xff\xfe and cut \xe2\x80"
    p.save(path)
    assert run("export-peft", path, tmp_path / "b").returncode == 0
    cfg = json.loads((tmp_path / "b" / "adapter_config.json").read_bytes().decode("utf-8"))
    assert cfg["base_model_name_or_path"] == "caf\u00e9 \t \"x\" \u2028 end"
    del data


def test_export_peft_writes_adapter_files(prompt_file, tmp_path):
    path, p = prompt_file
    d = tmp_path / "adapter"
    assert run("export-peft", path, d).returncode == 0
    cfg = json.loads((d / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING"
    assert cfg["num_virtual_tokens"] == 10 and cfg["token_dim"] == 64
    assert cfg["num_transformer_submodules"] == 1
    assert cfg["base_model_name_or_path"] == 'tiny "quoted" model'
    raw = (d / "adapter_model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    t = header["prompt_embeddings"]
    assert t["dtype"] == "F32" and t["shape"] == [10, 64]
    a, b = t["data_offsets"]
    E = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(10, 64)
    np.testing.assert_array_equal(E, p.forward())


def test_materialise_writes_a_numpy_file(prompt_file, tmp_path):
    path, p = prompt_file
    out = tmp_path / "e.npy"
    assert run("materialise", path, out).returncode == 0
    np.testing.assert_array_equal(np.load(out), p.forward())
    # the spelling of 1.1 stays an alias
    old = tmp_path / "old.npy"
    assert run("materialize", path, old).returncode == 0
    np.testing.assert_array_equal(np.load(old), p.forward())


def test_diff_exit_status_and_report(prompt_file, tmp_path):
    path, p = prompt_file
    r = run("diff", path, path)
    assert r.returncode == 0 and "identical" in r.stdout
    p.params[0] += 0.5
    p.set_meta("task", "ham")
    other = tmp_path / "o.ulpt"
    p.save(other)
    r = run("diff", path, other)
    assert r.returncode == 1
    assert "max |dZ| 0.5" in r.stdout and 'meta task: "spam" vs "ham"' in r.stdout
    r = run("diff", path, tmp_path / "missing.ulpt")
    assert r.returncode == 2 and "missing.ulpt" in r.stderr


def test_errors_are_one_line_on_stderr(tmp_path):
    r = run("info", tmp_path / "nope.ulpt")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "nope.ulpt" in r.stderr
    r = run("materialize", tmp_path / "nope.ulpt", tmp_path / "x.npy")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "nope.ulpt" in r.stderr
    assert run("convert", "a").returncode == 2
