"""Errors the user can act on. Entrypoints print them without a traceback."""


class TracelakeError(Exception):
    """Base of every error whose message says what was wrong and what to do."""
