"""The ``dynexport`` command line. One module per command; heavy imports (torch, converters)
happen inside the commands so that ``--help`` answers at once."""
