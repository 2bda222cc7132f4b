"""`python -m lossguided` (and `torchrun -m lossguided`) runs the CLI."""

import sys

from lossguided.cli import main

sys.exit(main())
