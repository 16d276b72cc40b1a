"""``python -m statemachine`` runs the ``ism`` command."""

import sys

from .cli import main

sys.exit(main())
