#!/usr/bin/env python3
"""Write docs/config.md (the config reference) from gantry.config's field table.

Usage: scripts/gen_config_doc.py [--check] [--output PATH]
With --check, write nothing and exit 1 when the file is out of date.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gantry.config.reference import render_reference

log = logging.getLogger("gen_config_doc")
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file differs from what would be generated")
    args = parser.parse_args(argv)
    text = render_reference()
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
    if args.check:
        if current != text:
            log.error("%s is out of date; run scripts/gen_config_doc.py", args.output)
            return 1
        return 0
    if current != text:
        args.output.write_text(text, encoding="utf-8")
        log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
