"""python -m findial.data.generator [--out DIR] [--seed 13] [--scale 1.0]: the same as `findial data generate`."""

from __future__ import annotations

import sys

from findial.cli import cmd_data

if __name__ == "__main__":
    raise SystemExit(cmd_data(["generate", *sys.argv[1:]]))
