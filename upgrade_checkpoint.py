#!/usr/bin/env python3
"""Rewrite a checkpoint of this project's earlier format (numpy RNG state inside) once as plain data.

    python3 upgrade_checkpoint.py IN OUT --trust_checkpoint

Reading IN unpickles it fully, which can run code: do it only for a file whose source you trust (your own runs).
OUT holds the same content with numpy arrays as tensors and numpy scalars as Python numbers, so every entry point
opens it weights-only, without the flag. Anything else that is not plain data is refused with one line (exit 2).
"""

from __future__ import annotations

from ops.startup import imports_done, pause_collector

if __name__ == "__main__":  # before the slow imports
    pause_collector()

import argparse
import io
import sys
from typing import Any

import numpy as np
import torch

from clsa.checkpoint import atomic_save, load_file
from ops.argparser import add_trust_flag, naming_flag
from ops.errors import UsageError, exit_usage
from ops.validate import check_output_file

if __name__ == "__main__":
    imports_done()  # see ops/startup.py

PROG = "upgrade_checkpoint.py"


def as_plain_data(obj: Any) -> Any:
    """`obj` with every numpy array as a tensor (unsigned integers wider than a byte as int64, as
    clsa.checkpoint.rng_state stores numpy's keys) and every numpy scalar as a Python number, through dicts, lists
    and tuples. Raises UsageError naming what weights-only loading would still refuse (e.g. an object array)."""
    def convert(x: Any) -> Any:
        if isinstance(x, np.ndarray) and x.dtype.kind in "biuf":
            return torch.from_numpy(x.astype(np.int64) if x.dtype.kind == "u" and x.itemsize > 1 else x.copy())
        if isinstance(x, np.generic):
            return x.item()
        if type(x) is dict:
            return {k: convert(v) for k, v in x.items()}
        if type(x) in (list, tuple):
            return type(x)(convert(v) for v in x)
        return x

    plain = convert(obj)
    buf = io.BytesIO()
    torch.save(plain, buf)
    buf.seek(0)
    left = torch.serialization.get_unsafe_globals_in_checkpoint(buf)
    if left:
        raise UsageError(f"IN holds objects that are neither numpy arrays nor numbers ({', '.join(left[:5])}); "
                         "re-save the tensors you need yourself")
    return plain


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("input", metavar="IN", help="checkpoint of the earlier format (.pth.tar)")
    p.add_argument("output", metavar="OUT", help="file to write (plain data)")
    add_trust_flag(p)
    args = p.parse_args(argv)
    try:
        check_output_file(args.output, "OUT", {"IN": args.input})
        with naming_flag("IN"):
            plain = as_plain_data(load_file(args.input, args.trust_checkpoint))
    except UsageError as err:
        exit_usage(PROG, err)
    atomic_save(plain, args.output)
    print(f"wrote {args.output}: plain data, opened weights-only by every entry point without the flag")
    return 0


if __name__ == "__main__":
    sys.exit(main())
