#!/usr/bin/env python
"""Same as `hwprune compare`; see `python tools/compare_results.py --help`."""

import sys

from hwprune.results.cli import main

if __name__ == "__main__":
    sys.exit(main())
