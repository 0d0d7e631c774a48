#!/usr/bin/env python
"""Compact a model with a channel mask and write a verified ONNX file plus a report.

Same as `hwprune export`; see `python tools/export_onnx.py --help`.
"""

import sys

from hwprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
