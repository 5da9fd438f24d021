"""The Python side of the Rust crate's file interoperability tests, through the
Python binding (bindings/python).

    interop.py save PATH E_OUT DTYPE   make a prompt (n 5, d 20, rank 2, Rademacher P), move
                                       Z, s and b with 4 SGD steps, set metadata, save it
                                       (DTYPE f32|f16|bf16) and write its E as raw
                                       little-endian float32
    interop.py load PATH E_OUT         load a prompt file, write its E as above
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "..", "..", "python"))
import ulpt  # noqa: E402

DTYPES = {"f32": ulpt.DTYPE_F32, "f16": ulpt.DTYPE_F16, "bf16": ulpt.DTYPE_BF16}


def write_e(prompt, path):
    np.asarray(prompt.forward(), dtype="<f4").tofile(path)


def main(argv):
    if len(argv) == 5 and argv[1] == "save":
        prompt = ulpt.Prompt(n_tokens=5, dim=20, rank=2, projection_seed=77, init_seed=5,
                             projection_kind=ulpt.PROJ_RADEMACHER)
        opt = ulpt.Optimizer(prompt, kind=ulpt.OPT_SGD, lr=0.1)
        target = np.linspace(-1, 1, 100, dtype=np.float32).reshape(5, 20)
        for _ in range(4):
            opt.train_step(lambda e: (float(((e - target) ** 2).sum() / 2), e - target))
        prompt.set_meta("model", "interop/python")
        prompt.set_meta("task", "files written by Python")
        prompt.save(argv[2], dtype=DTYPES[argv[4]])
        write_e(prompt, argv[3])
        return 0
    if len(argv) == 4 and argv[1] == "load":
        write_e(ulpt.Prompt.load(argv[2]), argv[3])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
