"""The error a user can fix: the CLI prints it as one ``error:`` line and exits 2."""


class ConfigError(ValueError):
    """A bad config, override, file or data/model mismatch, described in one line."""
