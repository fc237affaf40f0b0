"""`python -m cli` is the `monkeyjobs` command."""

from cli.main import main

main()
