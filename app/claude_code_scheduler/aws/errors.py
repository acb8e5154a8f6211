"""What an AWS failure means: transient or not, and in one line for a user."""

from __future__ import annotations

import botocore.exceptions

from claude_code_scheduler.errors import ConfigError

_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "KMSThrottling",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
    }
)
_MISSING = frozenset(
    {
        "NotFound",
        "NotFoundException",
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "NoSuchBucket",
    }
)
_DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AuthorizationError",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
        "ExpiredToken",
    }
)


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same call again later can succeed."""
    if isinstance(
        exc,
        botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | botocore.exceptions.ReadTimeoutError,
    ):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code", "") in _TRANSIENT_CODES or status >= 500
    return False


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return type(exc).__name__


def describe_error(exc: BaseException) -> str:
    """`Code: message` for an AWS error, the exception's text otherwise."""
    if isinstance(exc, botocore.exceptions.ClientError):
        message = exc.response.get("Error", {}).get("Message")
        return f"{error_code(exc)}: {message}" if message else error_code(exc)
    return f"{type(exc).__name__}: {exc}"


def explain(exc: Exception, option: str, what: str) -> ConfigError:
    """One line naming the option, for an AWS failure the user must fix."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return ConfigError(
            "no AWS credentials found: use an IAM role, --profile, or AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, botocore.exceptions.ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        if code in _MISSING:
            return ConfigError(f"{option}: {what} does not exist")
        if code in _DENIED:
            return ConfigError(f"{option}: access denied ({code}): {message}")
        return ConfigError(f"{option}: {code}: {message}")
    return ConfigError(f"{option}: cannot reach {what}: {exc}")
