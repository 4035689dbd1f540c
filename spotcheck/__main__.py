"""`python -m spotcheck`: the same as the `spotcheck` command."""

from spotcheck.cli import main

main()
