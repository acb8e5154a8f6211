"""claude-code-scheduler: a worker node that runs Claude Code tasks from SQS."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("claude-code-scheduler")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
