"""``python -m landmarks`` (also what ``torchrun -m landmarks train ...`` runs)."""

import sys

from landmarks.cli import main

sys.exit(main())
