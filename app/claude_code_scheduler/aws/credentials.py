"""The node's own AWS credentials as botocore resolves them, for redaction.

Wherever they come from (environment keys, a profile, a web identity, the
ECS/Fargate container endpoint), these are the values a leak would show, so
the node redacts them (logsetup.SECRETS). Credentials from an endpoint rotate:
`current()` gives them as they are now, refreshing when botocore would.
"""

from __future__ import annotations

from typing import Any

import boto3


class NodeCredentials:
    def __init__(self, session: boto3.Session) -> None:
        """`session`: made like the node's clients' (aws.clients): the same
        profile and environment, so the same chain."""
        self._session = session
        self._credentials: Any = None
        self._resolved = False

    @classmethod
    def for_node(cls, *, region: str, profile: str | None) -> NodeCredentials:
        return cls(boto3.Session(profile_name=profile, region_name=region))

    def current(self) -> tuple[str, ...]:
        """Access key id, secret key and session token, those that are set.
        The first call resolves the chain (it may call the container endpoint)."""
        if not self._resolved:
            self._credentials = self._session.get_credentials()
            self._resolved = True
        if self._credentials is None:
            return ()
        frozen = self._credentials.get_frozen_credentials()
        return tuple(
            value for value in (frozen.access_key, frozen.secret_key, frozen.token) if value
        )
