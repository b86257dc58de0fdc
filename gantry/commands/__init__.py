"""Command groups of the ``gantry`` CLI, one module each (kept out of ``gantry/cli.py``).

A group module has ``register(add)``, which adds its subparsers through ``cli.build_parser``'s
``add(name, help, description)``, and ``COMMANDS``: command name -> ``handler(args, life,
component) -> exit status``; or ``STANDALONE``: command name -> ``handler(args) -> exit
status``, for a command that makes its own (``watch``: many files, many projects).
"""
