"""User-facing errors.

Every problem a user can cause (bad config value, missing file, corrupt image, a batch that K does not
divide, ...) is raised as a subclass of :class:`TC2SSLError` with a message that names the problem. The
CLI prints these messages without a traceback; anything else is a bug in tc2ssl.
"""


class TC2SSLError(Exception):
    """Base class for errors caused by user input."""


class ConfigError(TC2SSLError, ValueError):
    """An invalid configuration key or value."""


class DataError(TC2SSLError):
    """A missing, empty, corrupt or unreadable dataset."""


class TrainingError(TC2SSLError):
    """Training cannot continue (e.g. a non-finite loss)."""


class CheckpointError(TC2SSLError):
    """A checkpoint is missing, corrupt or incompatible with the run."""


class RunFolderError(TC2SSLError):
    """A run folder cannot be used: another run's files, another process writing to it, or a disk that refuses
    writes (full, read-only)."""
