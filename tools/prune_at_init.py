#!/usr/bin/env python
"""Same as `hwprune prune-at-init`; see `python tools/prune_at_init.py --help`."""

import sys

from hwprune.at_init.cli import main

if __name__ == "__main__":
    sys.exit(main())
