"""Command groups of the ``gantryd`` CLI, one module each (kept out of ``gantryd/cli.py``).

A group module has ``register(command, components)``, which adds its subparsers through
``cli.build_parser``'s ``command(name, help)`` (a parser with the connection options and
PROJECT) and ``components(parser)`` (``-c COMP...``), and ``COMMANDS``: command name ->
``handler(args, store) -> exit status``.
"""
