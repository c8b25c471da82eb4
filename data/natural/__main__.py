"""python -m findial.data.natural check PATH... | build  (the same as `findial data natural ...`)."""

from __future__ import annotations

import sys

from findial.cli import cmd_data

if __name__ == "__main__":
    raise SystemExit(cmd_data(["natural", *sys.argv[1:]]))
