#!/usr/bin/env python
"""Same as `hwprune prune`; see `python tools/prune_to_budget.py --help`."""

import sys

from hwprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["prune", *sys.argv[1:]]))
