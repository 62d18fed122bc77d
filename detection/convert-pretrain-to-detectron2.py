#!/usr/bin/env python
"""Convert a CLSA/MoCo pretraining checkpoint (or a torchvision ResNet) to a detectron2 pickle.

Usage: python convert-pretrain-to-detectron2.py IN.pth.tar OUT.pkl [--quiet] [--trust_checkpoint]

Prints "old -> new" for every key (as MoCo's converter does) and a final line with the number of tensors written.
IN is read weights-only (export_backbone.py's .safetensors/.pth too). A file holding anything but tensors and plain
values, or no bottleneck ResNet encoder, is refused with one line on stderr and exit code 2; OUT is left untouched.
So is an OUT that is an existing folder or IN itself (also through a symbolic or hard link).
The logic lives in convert.py next to this file.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # convert.py, and the repository's clsa/ and ops/

from convert import ConversionError, convert_file  # noqa: E402

from ops.argparser import add_trust_flag  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, convert, report; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", metavar="IN", help="pretraining checkpoint (.pth.tar) or ResNet state dict")
    parser.add_argument("output", metavar="OUT", help="detectron2 pickle to write (.pkl)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the per-key renaming")
    add_trust_flag(parser)
    args = parser.parse_args(argv)
    try:
        count = convert_file(args.input, args.output, verbose=not args.quiet, trust=args.trust_checkpoint)
    except ConversionError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(f"wrote {count} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
