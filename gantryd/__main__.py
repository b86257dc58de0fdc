"""`python -m gantryd`: the same as the `gantryd` command."""
from .cli import entry

entry()
