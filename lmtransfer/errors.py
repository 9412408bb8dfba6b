"""Errors in what the user gave (a config value, a path, a file's contents), as opposed to bugs:
the command line prints them as one `error: ...` line and exits 2, as it does for bad flags.
Each message names the config key, file or path and what to do."""


class UserError(Exception):
    """Bad input, reported without a traceback by `lmtransfer.main`."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names its key."""


class NotFound(UserError, FileNotFoundError):
    """A path the config or the command line names that is not there (or not what it should
    be); the message names it."""
