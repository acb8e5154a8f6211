"""Reading one secret string: a Secrets Manager secret or an SSM parameter.

The thin adapter behind task.secrets (node.secrets) and the key sets and
signing keys kept in AWS (protocol.signing's callers). It returns the value
and never logs it; errors name the reference only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from claude_code_scheduler.aws.names import SecretRef

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_ssm import SSMClient


class SecretMissingValue(ValueError):
    """The secret exists but holds no string (a binary Secrets Manager secret)."""


class SecretSource(Protocol):
    def read(self, ref: SecretRef) -> str: ...


class SecretReader:
    """GetSecretValue or GetParameter (decrypted), as the reference says."""

    def __init__(self, secretsmanager: SecretsManagerClient, ssm: SSMClient) -> None:
        self._secretsmanager = secretsmanager
        self._ssm = ssm

    def read(self, ref: SecretRef) -> str:
        if ref.service == "secretsmanager":
            answer = self._secretsmanager.get_secret_value(SecretId=ref.ref)
            value = answer.get("SecretString")
            if value is None:
                raise SecretMissingValue(f"{ref.ref} holds binary data, not a string")
            return value
        parameter = self._ssm.get_parameter(Name=ref.ref, WithDecryption=True)["Parameter"]
        return parameter.get("Value", "")
