"""save_pretrained writes a PEFT prompt-tuning adapter that an independent reader --
written here from the safetensors format rules, not from any library -- parses, and
from_pretrained restores the prompt bit for bit (and resumes training from a checkpoint)."""
import json
import struct

import numpy as np
import pytest

import ulpt

DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "F64": ("<f8", 8), "BF16": (None, 2)}


def read_safetensors(path):
    """The safetensors rules: an unsigned little-endian 64-bit header size N, then N bytes
    of UTF-8 JSON mapping each tensor name to {dtype, shape, data_offsets [begin, end)}
    (relative to the byte after the header) plus an optional "__metadata__" map of
    strings; then the data, tensors in offset order, contiguous, row-major, little
    endian, with no gaps and nothing after the last."""
    blob = open(path, "rb").read()
    assert len(blob) >= 8
    (n,) = struct.unpack("<Q", blob[:8])
    assert 8 + n <= len(blob)
    header_bytes = blob[8:8 + n]
    header = json.loads(header_bytes.decode("utf-8"))
    assert header_bytes.lstrip()[:1] == b"{"
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {})
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    tensors, spans = {}, []
    for name, info in header.items():
        assert set(info) == {"dtype", "shape", "data_offsets"}
        begin, end = info["data_offsets"]
        np_dtype, size = DTYPES[info["dtype"]]
        count = int(np.prod(info["shape"])) if info["shape"] else 1
        assert end - begin == count * size and 0 <= begin <= end <= len(data)
        spans.append((begin, end))
        tensors[name] = np.frombuffer(data[begin:end], dtype=np_dtype).reshape(info["shape"])
    spans.sort()
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    return tensors, meta


def trained(n=5, d=24, **kw):
    p = ulpt.Prompt(n_tokens=n, dim=d, projection_seed=8, init_seed=1, **kw)
    p.meta["model"] = "org/base-model-7b"
    opt = ulpt.Optimizer(p, lr=0.05)
    T = np.linspace(-1, 1, n * d, dtype=np.float32).reshape(n, d)
    for _ in range(4):
        opt.train_step(lambda E: (float(((E - T) ** 2).sum()), 2 * (E - T)))
    return p, opt


def test_save_pretrained_writes_a_peft_prompt_tuning_adapter(tmp_path):
    p, _ = trained()
    p.save_pretrained(tmp_path / "adapter", task_type="SEQ_CLS")
    files = sorted(f.name for f in (tmp_path / "adapter").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "ulpt_prompt.ulpt"]
    tensors, _ = read_safetensors(tmp_path / "adapter" / "adapter_model.safetensors")
    assert list(tensors) == ["prompt_embeddings"]
    E = tensors["prompt_embeddings"]
    assert E.dtype == np.float32 and E.shape == (5, 24)
    np.testing.assert_array_equal(E, p.forward())
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text("utf-8"))
    assert config["peft_type"] == "PROMPT_TUNING" and config["task_type"] == "SEQ_CLS"
    assert config["num_virtual_tokens"] == 5 and config["token_dim"] == 24
    assert config["num_transformer_submodules"] == 1
    assert config["base_model_name_or_path"] == "org/base-model-7b"


def test_from_pretrained_restores_bit_identical_parameters_and_metadata(tmp_path):
    p, _ = trained(flags=ulpt.NO_SHIFT)
    p.meta["task"] = "sst2"
    p.save_pretrained(tmp_path)
    q = ulpt.Prompt.from_pretrained(tmp_path)
    assert q.params.tobytes() == p.params.tobytes()
    assert dict(q.meta) == dict(p.meta) and q.flags == ulpt.NO_SHIFT
    assert q.forward().tobytes() == p.forward().tobytes()


def test_with_an_optimizer_from_pretrained_resumes_training_exactly(tmp_path):
    p, opt = trained()
    opt.save_pretrained(tmp_path)
    assert (tmp_path / "ulpt_checkpoint.ulpt").exists()
    resumed = ulpt.Optimizer.from_pretrained(tmp_path)
    assert resumed.step_count == 4
    assert resumed.prompt.params.tobytes() == p.params.tobytes()
    assert ulpt.Prompt.from_pretrained(tmp_path).params.tobytes() == p.params.tobytes()
    for o in (opt, resumed):
        for _ in range(3):
            o.train_step(lambda E: (float((E ** 2).sum()), 2 * E))
    assert resumed.prompt.params.tobytes() == p.params.tobytes()
    # saving the prompt alone afterwards drops the stale checkpoint
    p.save_pretrained(tmp_path)
    assert not (tmp_path / "ulpt_checkpoint.ulpt").exists()
    fresh = ulpt.Optimizer.from_pretrained(tmp_path, lr=0.5)
    assert fresh.step_count == 0 and fresh.lr == 0.5


def test_save_pretrained_checks_its_arguments(tmp_path):
    p, opt = trained()
    other, _ = trained()
    with pytest.raises(ulpt.InvalidArgumentError):
        p.save_pretrained(tmp_path, task_type="CHAT")
    with pytest.raises(ulpt.InvalidArgumentError):
        ulpt.save_pretrained(other, tmp_path, optimizer=opt)
    with pytest.raises(FileNotFoundError):
        ulpt.Prompt.from_pretrained(tmp_path / "nothing")
    np.testing.assert_array_equal(read_safetensors_roundtrip(p, tmp_path), p.forward())


def read_safetensors_roundtrip(p, tmp_path):
    p.export_safetensors(tmp_path / "e.safetensors")
    return read_safetensors(tmp_path / "e.safetensors")[0]["prompt_embeddings"]


def test_any_model_name_gives_valid_json_and_none_gives_null(tmp_path):
    p, _ = trained()
    name = 'org/\u00e9 "quoted" \\ \t \u2028 \U0001F600'
    p.meta["model"] = name
    p.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_bytes().decode("utf-8"))
    assert config["base_model_name_or_path"] == name
    del p.meta["model"]
    p.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] is None
