"""One module per subcommand. Each defines:

* ``NAME`` (the subcommand), ``SUMMARY`` (one line for ``--help``), ``ORDER`` (position in the list),
* ``main(argv: list[str]) -> int``, which parses its own arguments (argparse with examples in the
  epilog) and raises ``TraceError`` subclasses for anything the user got wrong.

``cli`` discovers the modules here, so adding a subcommand is adding a file.
"""
