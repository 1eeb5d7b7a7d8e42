"""`python -m rayot` is the `rayot` command."""

from rayot.cli import main

main()
