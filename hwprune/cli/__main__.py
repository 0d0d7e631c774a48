"""`python -m hwprune.cli`: the `hwprune` command."""

import sys

from hwprune.cli import main

sys.exit(main())
