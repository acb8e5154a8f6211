"""The error every command turns into one line and exit 2."""


class ConfigError(ValueError):
    """A problem the user must fix; the message names the option."""


# The exit codes of every command.
EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected error, a failed run, an unhealthy node
EXIT_USAGE = 2  # a ConfigError or a usage error: one line on stderr
EXIT_WAIT_TIMEOUT = 124  # submit --wait-timeout, as timeout(1) does
EXIT_INTERRUPTED = 130
