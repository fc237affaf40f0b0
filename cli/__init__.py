"""The `monkeyjobs` command line: one click group, subcommands grouped by what they touch."""
