#!/usr/bin/env python
"""Same as `hwprune profile-edges`; see `python tools/profile_edges.py --help`."""

import sys

from hwprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["profile-edges", *sys.argv[1:]]))
