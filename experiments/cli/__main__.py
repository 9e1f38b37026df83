"""``python -m experiments.cli``: the ``dualpath`` command."""

import sys

from experiments.cli import main

sys.exit(main())
