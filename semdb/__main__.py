"""``python -m semdb`` is the ``semdb`` command."""

from semdb.cli import main

main()
