"""The error a user can fix: the CLI prints it as one ``error:`` line and exits 2."""


class ConfigError(ValueError):
    """A bad config, override, file or data/model mismatch, described in one line."""


class StorageError(ConfigError):
    """A file of the run could not be written or read (disk full, read-only, permissions),
    described in one line with what to do; the run resumes once the cause is fixed."""
