"""The project's error classes. The CLI maps them to exit codes (see `lss_cli.cli.main`).

Every error carries a `hint`: the one thing a user should do next. Library code raises these and
never calls `sys.exit`, so everything stays testable without the CLI.
"""

from __future__ import annotations


class LssError(Exception):
    """An anticipated runtime failure (exit code 1): bad data, a missing file mid-run, a server down."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHint: {self.hint}"


class ConfigError(LssError):
    """A usage or configuration error found before any heavy work (exit code 2)."""

    exit_code = 2


class InputFileError(ConfigError):
    """A file named on the command line or in a config does not exist or cannot be parsed (exit 2)."""
