"""ulpt.torch: the module's gradients are torch autograd's of s*(Z@P)+b, torch optimizers
train it in libulpt's memory, its state dict round-trips, and the example trains."""
import copy
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ulpt  # noqa: E402
import ulpt.torch  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
EXAMPLE = os.path.join(ROOT, "bindings", "python", "examples", "torch_prepend.py")

torch.set_num_threads(1)


def module(**kw):
    options = dict(n_tokens=6, dim=32, rank=2, projection_seed=4, init_seed=2)
    options.update(kw)
    m = ulpt.torch.ULPTPrompt(**options)
    rng = np.random.default_rng(1)
    m.prompt.params[:] = rng.standard_normal(m.prompt.num_params).astype(np.float32)
    return m


def reference(m, dtype=torch.float64):
    """Leaf copies of Z, s, b and E = s * (Z @ P) + b in torch."""
    P = torch.tensor(m.prompt.projection().matrix, dtype=dtype)
    Z, s, b = (x.detach().to(dtype).clone().requires_grad_(True) for x in (m.Z, m.s, m.b))
    return Z, s, b, s * (Z @ P) + b


def test_gradients_of_Z_s_b_equal_torch_autograd_to_1e_6():
    m = module()
    G = torch.randn(6, 32, generator=torch.Generator().manual_seed(3))
    E = m()
    Z, s, b, E_ref = reference(m)
    np.testing.assert_allclose(E.detach().numpy(), E_ref.detach().numpy(), rtol=1e-6, atol=1e-6)
    (E * G).sum().backward()
    (E_ref * G.double()).sum().backward()
    for mine, ref in ((m.Z, Z), (m.s, s), (m.b, b)):
        np.testing.assert_allclose(mine.grad.numpy(), ref.grad.numpy(), rtol=1e-6, atol=1e-6)
    # a nonlinear loss, through the whole graph
    for p in m.parameters():
        p.grad = None
    Z, s, b, E_ref = reference(m)
    torch.tanh(m()).pow(3).sum().backward()
    torch.tanh(E_ref).pow(3).sum().backward()
    for mine, ref in ((m.Z, Z), (m.s, s), (m.b, b)):
        np.testing.assert_allclose(mine.grad.numpy(), ref.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_parameters_share_memory_with_the_library():
    m = module()
    assert m.Z.data_ptr() == m.prompt.params.ctypes.data
    assert m.s.data_ptr() == m.prompt.s.ctypes.data and m.b.data_ptr() == m.prompt.b.ctypes.data
    with torch.no_grad():
        m.b.fill_(0.25)
    assert (m.prompt.b == 0.25).all()
    m.prompt.Z[:] = 0
    assert not m.Z.detach().any()
    assert [n for n, _ in m.named_parameters()] == ["Z", "s", "b"]
    ablated = ulpt.torch.ULPTPrompt(n_tokens=2, dim=8, flags=ulpt.NO_SCALE | ulpt.NO_SHIFT)
    assert [n for n, _ in ablated.named_parameters()] == ["Z"]
    ablated().sum().backward()
    assert ablated.Z.grad.shape == (2, 2)


def test_a_torch_optimizer_and_scheduler_train_it():
    m = module()
    target = torch.randn(6, 32, generator=torch.Generator().manual_seed(5))
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, 20, 0.5)
    losses = []
    for _ in range(60):
        loss = ((m() - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 10.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # what torch changed is what the library computes with
    np.testing.assert_array_equal(m().detach().numpy(), m.prompt.forward())


def test_the_librarys_optimizer_steps_on_the_gradients_autograd_accumulated():
    m = module()
    ref = module()
    lib_opt = ulpt.Optimizer(m.prompt, kind="sgd", lr=0.1)
    torch_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    target = torch.ones(6, 32)
    for _ in range(3):
        lib_opt.zero_grad()
        torch_opt.zero_grad()
        for half in (0, 1):          # two backward passes accumulate
            ((m()[half::2] - target[half::2]) ** 2).sum().backward()
            ((ref()[half::2] - target[half::2]) ** 2).sum().backward()
        lib_opt.step()
        torch_opt.step()
    np.testing.assert_allclose(m.prompt.params, ref.prompt.params, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trips_and_refuses_another_prompt():
    m = module()
    state = m.state_dict()
    assert set(state) == {"Z", "s", "b", "_extra_state"}
    other = module(init_seed=9)
    other.prompt.params[:] = 0
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.prompt.params, m.prompt.params)
    assert other.Z.data_ptr() == other.prompt.params.ctypes.data      # still shared
    np.testing.assert_array_equal(other().detach().numpy(), m().detach().numpy())
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "ulpt-state-%d.pt" % os.getpid())
    try:
        torch.save(state, path)
        again = module(init_seed=11)
        again.load_state_dict(torch.load(path))
        np.testing.assert_array_equal(again.prompt.params, m.prompt.params)
    finally:
        os.unlink(path)
    with pytest.raises(ulpt.MismatchError):
        module(projection_seed=5).load_state_dict(state)


def test_copies_and_pickles_keep_the_sharing():
    m = module()
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert c.prompt is not m.prompt and c.Z.data_ptr() == c.prompt.params.ctypes.data
        np.testing.assert_array_equal(c().detach().numpy(), m().detach().numpy())


def test_moving_the_module_off_the_shared_memory_is_refused_clearly():
    m = module()
    m.Z.data = m.Z.data.clone()          # behind the module's back: caught at forward
    with pytest.raises(RuntimeError, match="no longer share"):
        m()


def test_prepend_puts_E_before_the_embeddings_in_their_dtype():
    m = module()
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    out = m.prepend(x)
    assert out.shape == (3, 11, 32) and out.dtype == torch.float64
    np.testing.assert_allclose(out[1, :6].detach().numpy(), m.prompt.forward(), rtol=1e-7)
    assert torch.equal(out[:, 6:], x)
    mask = m.extend_attention_mask(torch.zeros(3, 5, dtype=torch.long))
    assert mask.shape == (3, 11) and mask[:, :6].all() and not mask[:, 6:].any()
    with pytest.raises(ValueError):
        m.prepend(torch.zeros(3, 5, 31))


def test_the_example_trains_a_prompt_for_a_frozen_model(tmp_path):
    r = subprocess.run([sys.executable, EXAMPLE, "--steps", "120", "--save", str(tmp_path / "a")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", r.stdout).groups())
    assert last < 0.75 * first
    assert (tmp_path / "a" / "adapter_config.json").exists()
    restored = ulpt.torch.ULPTPrompt.from_pretrained(tmp_path / "a")
    assert restored.prompt.meta["model"] == "tiny-causal-lm"
