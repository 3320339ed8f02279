"""User-facing errors: the CLI prints these as one line and exits non-zero, no traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad input, missing data, wrong option).

    The message must say what is wrong and what to do, on one line.
    """

    exit_code = 2


class DataError(UserError):
    """A dataset on disk is missing, misnamed, corrupt or in the wrong encoding."""


class ConfigError(UserError):
    """udabench.toml or a --set override is malformed, mistyped or names an unknown key."""
