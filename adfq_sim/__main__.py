"""`python -m adfq_sim` is the same as the `adfq-sim` command."""

import sys

from adfq_sim.cli import main

sys.exit(main())
