"""Placeholder until its owner writes it."""

COMMANDS: list = []
