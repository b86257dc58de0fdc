"""``python -m gantry ...`` is ``gantry ...``."""
import sys

from gantry.cli import main

sys.exit(main())
