"""`python -m gantryd`: the same as the `gantryd` command."""
import sys

from .cli import main

sys.exit(main())
