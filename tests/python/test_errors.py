"""Python's exception conventions: one row of docs/PYTHON.md's exception table a test,
arguments checked before the C call, and interrupts that propagate as themselves with
the prompt and optimizer untouched."""
import ctypes
import errno
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

import ulpt


@pytest.fixture
def prompt():
    p = ulpt.Prompt(n_tokens=4, dim=8, projection_seed=2, init_seed=3)
    p.meta["model"] = "tiny"
    return p


def state(opt):
    """Everything a failed step must leave alone: the checkpoint bytes (parameters,
    metadata, options, step count, moments) and the gradients."""
    return opt.to_bytes(), opt.prompt.grads.copy()


def assert_row(exc, cls, builtin, code, text):
    assert type(exc) is cls and isinstance(exc, builtin) and isinstance(exc, ulpt.Error)
    assert exc.code == code and exc.message == str(exc) and text in str(exc)


# ----------------------------------------------------------------------------- the table


def test_row_invalid_argument_is_a_ValueError_with_the_librarys_message():
    with pytest.raises(ValueError) as err:
        ulpt.Prompt(n_tokens=4, dim=4, rank=8)
    assert_row(err.value, ulpt.InvalidArgumentError, ValueError, ulpt.ERR_INVALID,
               "ulpt_prompt_create: rank 8 is greater than dim 4")


def test_row_wrong_type_is_a_TypeError(prompt):
    with pytest.raises(TypeError) as err:
        prompt.set_meta(1, "x")                 # was AttributeError
    assert_row(err.value, ulpt.ArgumentTypeError, TypeError, ulpt.ERR_INVALID,
               "metadata key must be str or bytes, got int")


def test_row_out_of_memory_is_a_MemoryError():
    fail = ulpt.ulpt_allocator(ulpt.ALLOC_FN(lambda user, size: None),
                               ulpt.REALLOC_FN(lambda user, ptr, size: None),
                               ulpt.FREE_FN(lambda user, ptr: None), None)
    ulpt.set_allocator(fail)
    try:
        with pytest.raises(MemoryError) as err:
            ulpt.Prompt(n_tokens=4, dim=8)
    finally:
        ulpt.set_allocator(None)
    assert_row(err.value, ulpt.OutOfMemoryError, MemoryError, ulpt.ERR_NOMEM, "no memory")


def test_set_allocator_routes_every_allocation_through_python_callbacks():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = libc.realloc.restype = ctypes.c_void_p
    libc.malloc.argtypes, libc.realloc.argtypes = [ctypes.c_size_t], [ctypes.c_void_p, ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    live = {}

    def alloc(user, size):
        ptr = libc.malloc(size)
        live[ptr] = size
        return ptr

    def realloc(user, ptr, size):
        live.pop(ptr, None)
        new = libc.realloc(ptr, size)
        live[new] = size
        return new

    def free(user, ptr):
        if ptr:
            live.pop(ptr)
            libc.free(ptr)

    counting = ulpt.ulpt_allocator(ulpt.ALLOC_FN(alloc), ulpt.REALLOC_FN(realloc),
                                   ulpt.FREE_FN(free), None)
    ulpt.set_allocator(counting)
    try:
        p = ulpt.Prompt(n_tokens=4, dim=8)
        p.meta["k"] = "v"
        opt = ulpt.Optimizer(p)
        assert sum(live.values()) > 4 * (p.num_params + 4 * 8)
    finally:
        ulpt.set_allocator(None)
    opt.train_step(lambda E, G: 0.0)
    opt.close(), p.close()
    del opt, p
    assert live == {}                     # freed through the allocator that made them
    with pytest.raises(TypeError):
        ulpt.set_allocator("malloc")


def test_row_io_missing_file_is_FileNotFoundError_with_errno_and_filename(tmp_path):
    path = tmp_path / "absent.ulpt"
    with pytest.raises(FileNotFoundError) as err:
        ulpt.Prompt.load(path)
    assert_row(err.value, ulpt.MissingFileError, OSError, ulpt.ERR_IO, "No such file")
    assert err.value.errno == errno.ENOENT and err.value.filename == str(path)
    assert err.value.strerror == os.strerror(errno.ENOENT)
    with pytest.raises(FileNotFoundError):
        ulpt.Prompt(n_tokens=1, dim=2).save(tmp_path / "no" / "dir.ulpt")


def test_row_io_directory_is_IsADirectoryError(tmp_path):
    with pytest.raises(IsADirectoryError) as err:
        ulpt.Prompt.load(tmp_path)
    assert_row(err.value, ulpt.DirectoryError, OSError, ulpt.ERR_IO, "Is a directory")
    assert err.value.errno == errno.EISDIR and err.value.filename == str(tmp_path)


def test_row_io_permission_is_PermissionError(tmp_path, prompt):
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "p.ulpt"
    else:
        target = "/sys/ulpt-test.ulpt"   # sysfs refuses new files even to root
    with pytest.raises(PermissionError) as err:
        prompt.save(target)
    assert_row(err.value, ulpt.FilePermissionError, OSError, ulpt.ERR_IO, "Permission denied")
    assert err.value.errno == errno.EACCES and err.value.filename == str(target)


def test_row_io_other_failures_are_OSError_with_errno(tmp_path, prompt):
    afile = tmp_path / "file"
    afile.write_bytes(b"")
    with pytest.raises(OSError) as err:
        prompt.save(afile / "below.ulpt")
    assert_row(err.value, ulpt.FileIOError, OSError, ulpt.ERR_IO, "Not a directory")
    assert err.value.errno == errno.ENOTDIR
    assert pickle.loads(pickle.dumps(err.value)).errno == errno.ENOTDIR


def test_row_format_is_a_ValueError(tmp_path, prompt):
    path = tmp_path / "p.ulpt"
    prompt.save(path)
    with pytest.raises(ValueError) as err:
        ulpt.Optimizer.load_checkpoint(path)
    assert_row(err.value, ulpt.FormatError, ValueError, ulpt.ERR_FORMAT, "ulpt_checkpoint_load")
    with pytest.raises(ulpt.FormatError):
        ulpt.Prompt.from_bytes(b"PK\x03\x04 this is a zip file, not a prompt" * 4)


def test_row_corrupt_is_a_ValueError(tmp_path, prompt):
    data = bytearray(prompt.to_bytes())
    data[len(data) // 2] ^= 0x40
    with pytest.raises(ValueError) as err:
        ulpt.Prompt.from_bytes(bytes(data))
    assert_row(err.value, ulpt.CorruptError, ValueError, ulpt.ERR_CORRUPT, "ulpt_prompt_load_buffer")


def test_row_mismatch_is_a_ValueError(tmp_path, prompt):
    path = tmp_path / "p.ulpt"
    prompt.save(path)
    assert ulpt.Prompt.load(path, model="tiny").meta["model"] == "tiny"
    with pytest.raises(ValueError) as err:
        ulpt.Prompt.load(path, model="huge")
    assert_row(err.value, ulpt.MismatchError, ValueError, ulpt.ERR_MISMATCH, "huge")


def test_row_nonfinite_is_a_FloatingPointError(prompt):
    prompt.s[5] = np.inf
    with pytest.raises(FloatingPointError) as err:
        prompt.forward()
    assert_row(err.value, ulpt.NonFiniteError, ArithmeticError, ulpt.ERR_NONFINITE, "scale[5]")


def test_row_callback_is_a_RuntimeError_caused_by_the_callbacks_exception(prompt):
    opt = ulpt.Optimizer(prompt)
    before = state(opt)

    def host(E, G):
        raise KeyError("token 17")

    with pytest.raises(RuntimeError) as err:
        opt.train_step(host)
    assert_row(err.value, ulpt.CallbackError, RuntimeError, ulpt.ERR_CALLBACK, "KeyError")
    assert isinstance(err.value.__cause__, KeyError)
    assert state(opt)[0] == before[0]


def test_row_unsupported_is_a_NotImplementedError():
    err = ulpt.errors.error(ulpt.ERR_UNSUPPORTED, "ulpt_x: not in this build")
    assert_row(err, ulpt.UnsupportedError, NotImplementedError, ulpt.ERR_UNSUPPORTED, "build")


def test_row_closed_is_a_ValueError(prompt):
    prompt.close()
    with pytest.raises(ValueError) as err:
        prompt.zero_grad()
    assert_row(err.value, ulpt.ClosedError, ValueError, ulpt.ERR_INVALID, "Prompt is closed")


def test_row_busy_is_a_RuntimeError(prompt):
    opt = ulpt.Optimizer(prompt)
    caught = []

    def host(E, G):
        try:
            prompt.close()
        except Exception as exc:
            caught.append(exc)
        return 0.0

    opt.train_step(host)
    assert_row(caught[0], ulpt.BusyError, RuntimeError, ulpt.ERR_BUSY,
               "Prompt.close: the object is in use by a running Optimizer.train_step in "
               "this thread (from its loss callback)")
    # the library's own ULPT_ERR_BUSY maps to the same class
    assert type(ulpt.errors.error(ulpt.ERR_BUSY, "m")) is ulpt.BusyError


def test_every_code_has_its_class_and_strerror():
    for code, cls in ulpt.errors._BY_CODE.items():
        assert ulpt.errors.error(code, "m").__class__ is cls
        assert ulpt.strerror(code) not in ("unknown error", "success")
    assert ulpt.strerror(0) == "success" and ulpt.strerror(-99) == "unknown error"


# ----------------------------------------------------------------------------- interrupts


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_interrupts_in_the_callback_propagate_as_themselves_with_state_untouched(prompt, exc):
    opt = ulpt.Optimizer(prompt, lr=0.1)
    opt.train_step(lambda E: (1.0, np.ones_like(E)))
    prompt.grads[:] = 0.125
    before = state(opt)

    def host(E, G):
        G[:] = 5
        raise exc("stop")

    with pytest.raises(exc) as err:
        opt.train_step(host)
    assert type(err.value) is exc and str(err.value) == "stop"
    after = state(opt)
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])
    assert opt.step_count == 1


def test_a_real_SIGINT_during_train_step_raises_KeyboardInterrupt_and_changes_nothing(prompt):
    opt = ulpt.Optimizer(prompt, lr=0.1)
    opt.train_step(lambda E: (1.0, np.ones_like(E)))
    before = state(opt)
    calls = []

    def slow_host(E, G):
        calls.append(1)
        G[:] = 1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:   # a model that takes a while
            time.sleep(0.005)
        return 1.0

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            opt.train_step(slow_host)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, old)
    assert calls == [1]
    after = state(opt)
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])
    assert opt.step_count == 1
    opt.train_step(lambda E: (1.0, np.ones_like(E)))   # and training goes on
    assert opt.step_count == 2


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("options, cls, text", [
    (dict(n_tokens=-1), ulpt.InvalidArgumentError, "n_tokens must be in 1..4294967295, got -1"),
    (dict(n_tokens=0), ulpt.InvalidArgumentError, "n_tokens must be in 1..4294967295, got 0"),
    (dict(n_tokens=2**32), ulpt.InvalidArgumentError, "got 4294967296"),
    (dict(n_tokens=4.0), ulpt.ArgumentTypeError, "n_tokens must be an int, got float"),
    (dict(n_tokens=True), ulpt.ArgumentTypeError, "n_tokens must be an int, got bool"),
    (dict(dim="8"), ulpt.ArgumentTypeError, "dim must be an int, got str"),
    (dict(projection_seed=-1), ulpt.InvalidArgumentError,
     "projection_seed must be in 0..18446744073709551615, got -1"),
    (dict(projection_seed=2**64), ulpt.InvalidArgumentError, "got 18446744073709551616"),
    (dict(init_seed=-5), ulpt.InvalidArgumentError, "init_seed must be in"),
    (dict(init_std="1"), ulpt.ArgumentTypeError, "init_std must be a real number"),
    (dict(init_std=-1.0), ulpt.InvalidArgumentError, "init_std"),
    (dict(projection_kind=9), ulpt.InvalidArgumentError, "projection_kind must be one of"),
    (dict(projection_kind="sobol"), ulpt.InvalidArgumentError, "xavier_uniform"),
    (dict(flags=8), ulpt.InvalidArgumentError, "flags"),
    (dict(n_tokens=5, n_groups=2), ulpt.InvalidArgumentError, "multiple"),
])
def test_prompt_options_are_checked_before_the_call(options, cls, text):
    full = dict(n_tokens=4, dim=8)
    full.update(options)
    with pytest.raises(cls) as err:
        ulpt.Prompt(**full)
    assert text in str(err.value)


def test_seeds_take_the_whole_unsigned_64_bit_range():
    p = ulpt.Prompt(n_tokens=1, dim=4, projection_seed=2**64 - 1, init_seed=2**64 - 1)
    assert p.projection().seed == 2**64 - 1
    assert ulpt.Prompt(n_tokens=1, dim=4, projection_seed=np.uint64(7)).projection().seed == 7


def test_options_are_keyword_only_and_unknown_ones_are_TypeErrors():
    with pytest.raises(TypeError):
        ulpt.Prompt(4, 8)
    with pytest.raises(TypeError):
        ulpt.Prompt(n_tokens=4, dim=8, ranks=2)


@pytest.mark.parametrize("options, text", [
    (dict(lr=0.0), "lr"), (dict(lr="fast"), "lr must be a real number"),
    (dict(beta1=1.0), "betas (1, 0.999)"), (dict(kind="adagrad"), "kind must be one of sgd, adam, adamw"),
    (dict(schedule="linear", warmup_steps=10, total_steps=5), "total_steps"),
    (dict(warmup_steps=-1), "warmup_steps must be in 0.."), (dict(weight_decay=-0.5), "weight_decay"),
])
def test_optimizer_options_are_checked(prompt, options, text):
    with pytest.raises((ulpt.InvalidArgumentError, ulpt.ArgumentTypeError)) as err:
        ulpt.Optimizer(prompt, **options)
    assert text in str(err.value)


def test_backward_takes_exactly_the_prompts_shape_in_any_real_dtype_and_layout(prompt):
    G = np.random.default_rng(0).standard_normal(prompt.shape)
    prompt.backward(G.astype(np.float32))
    want = prompt.grads.copy()
    for variant in (G, G.astype(np.float16).astype(np.float64) * 0 + G,   # float64
                    np.asfortranarray(G), np.repeat(G, 2, axis=1)[:, ::2]):  # strided
        prompt.zero_grad()
        prompt.backward(variant)
        np.testing.assert_array_equal(prompt.grads, want)
    for bad in (G.T, G.reshape(-1), G[:, :4], G[None]):            # (8, 4), flat, ...
        with pytest.raises(ulpt.InvalidArgumentError) as err:
            prompt.backward(bad)
        assert "grad must have shape (4, 8), got %s" % (bad.shape,) in str(err.value)
    with pytest.raises(ulpt.ArgumentTypeError):
        prompt.backward(np.full(prompt.shape, "x"))
    with pytest.raises(ulpt.ArgumentTypeError):
        prompt.backward(np.zeros(prompt.shape, complex))


def test_forward_into_an_out_array_checks_it(prompt):
    out = np.empty(prompt.shape, np.float32)
    assert prompt.forward(out=out) is out
    for bad in (np.empty(prompt.shape), np.empty((8, 4), np.float32),
                np.empty((4, 16), np.float32)[:, ::2]):
        with pytest.raises(ulpt.InvalidArgumentError):
            prompt.forward(out=bad)


def test_metadata_must_be_str_or_bytes_without_NUL(prompt):
    with pytest.raises(ulpt.InvalidArgumentError) as err:
        prompt.set_meta("k", "a\0b")            # stored "a" before
    assert "NUL" in str(err.value)
    with pytest.raises(ulpt.InvalidArgumentError):
        prompt.meta["a\0b"] = "v"
    with pytest.raises(ulpt.ArgumentTypeError):
        prompt.meta["k"] = 3
    with pytest.raises(ulpt.InvalidArgumentError) as err:
        prompt.meta[""] = "v"
    assert "ulpt_prompt_set_meta" in str(err.value)
    assert "k" not in prompt.meta


def test_metadata_must_be_utf8_and_bytes_read_back_as_stored(prompt):
    with pytest.raises(ulpt.InvalidArgumentError) as err:
        prompt.meta_bytes[b"model"] = b"caf\xe9 \xff\xfe"        # Latin-1, not UTF-8
    assert "UTF-8" in str(err.value) and "ulpt_prompt_set_meta" in str(err.value)
    with pytest.raises(ulpt.InvalidArgumentError):
        prompt.meta["model"] = "lone \udcff surrogate"
    assert prompt.meta["model"] == "tiny"                          # unchanged
    prompt.meta["model"] = "caf\u00e9"
    assert prompt.meta_bytes[b"model"] == "caf\u00e9".encode("utf-8")


def test_paths_with_NUL_or_of_the_wrong_type_are_refused(prompt):
    with pytest.raises(ulpt.InvalidArgumentError):
        prompt.save("a\0b.ulpt")
    with pytest.raises(ulpt.ArgumentTypeError):
        ulpt.Prompt.load(3.5)


def test_loss_function_results_are_checked(prompt):
    opt = ulpt.Optimizer(prompt)
    for host, cause in ((lambda E: (1.0, np.zeros((8, 4))), ulpt.InvalidArgumentError),
                        (lambda E: ("high", np.zeros((4, 8))), ulpt.ArgumentTypeError),
                        (lambda E: (1.0, 2.0, 3.0), ulpt.InvalidArgumentError),
                        (lambda E, G: None, ulpt.ArgumentTypeError)):
        with pytest.raises(ulpt.CallbackError) as err:
            opt.train_step(host)
        assert isinstance(err.value.__cause__, cause)
    with pytest.raises(ulpt.ArgumentTypeError):
        opt.train_step("not callable")
    with pytest.raises(ulpt.NonFiniteError):
        opt.train_step(lambda E, G: float("inf"))
    with pytest.raises(ulpt.NonFiniteError):
        opt.train_step(lambda E: (1.0, np.full(E.shape, np.nan)))
    assert opt.step_count == 0
