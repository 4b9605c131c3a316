"""``python -m neo.cli`` (what ``torchrun -m neo.cli train ...`` runs): the ``neo`` command."""

import sys

from .main import main

sys.exit(main())
