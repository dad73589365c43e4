"""Errors a user can act on: the CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Something was wrong with the input or environment; the message says what to do."""
