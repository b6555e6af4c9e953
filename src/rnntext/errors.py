"""Exceptions a user can act on. The CLI prints these as one line, without a traceback."""

from __future__ import annotations


class RnnTextError(Exception):
    """Base class for every error rnntext raises on purpose."""


class DataError(RnnTextError):
    """Bad input data: names the file and, where it can, the line."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class ConfigError(RnnTextError):
    """An option value or a combination of options that cannot work."""


class CheckpointError(RnnTextError):
    """A run directory that is missing, incomplete, corrupted or from a newer version."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class TrainingInterrupted(RnnTextError):
    """Ctrl-C during training: a checkpoint was saved and the message says how to resume.
    The CLI exits with status 130 (the shell's code for SIGINT)."""
