#!python
"""Aliases `gantry.py` and `gantryd.py`, so classic command lines keep working
(`gantryd.py update myproject -c web`). The package to run is this file's own name.

Installed beside the console scripts, this file is also importable, as a module named like
the package, by every script in that folder (Python puts a script's folder first on
sys.path). Imported that way, it drops its folder from sys.path and hands the import over to
the real package, so `gantry` and `pytest` in the same folder still import the package.
"""
import importlib
import os
import sys

_here = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _here]
_package = os.path.splitext(os.path.basename(__file__))[0]

if __name__ == "__main__":
    _cli = importlib.import_module(f"{_package}.cli")
    # gantryd's entry() is main() plus a prompt exit (see gantryd.cli.entry).
    sys.exit(_cli.entry() if hasattr(_cli, "entry") else _cli.main())
else:
    del sys.modules[__name__]
    sys.modules[__name__] = importlib.import_module(__name__)
