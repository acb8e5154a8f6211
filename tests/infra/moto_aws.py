"""The AWS CLI calls the init script makes, made with boto3: its AWS_CMD for a
moto server, where no AWS CLI is installed.

Usage (run from the repository): python -m tests.infra.moto_aws --endpoint-url URL
[aws arguments...]. Credentials come from the environment, as for the AWS CLI.
It prints what the script's --query asks for, and fails as the CLI does (254)
when the call fails, which is how the script sees that a bucket is missing.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import boto3
import botocore.exceptions

from tests.infra.fake_aws import parse

CLI_CALL_FAILED = 254  # the AWS CLI's exit status for a failed call


def shorthand(text: str) -> dict[str, str]:
    """The CLI's `Key=value,Key=value` form."""
    return dict(pair.split("=", 1) for pair in text.split(",")) if text else {}


def call(client: Any, service: str, operation: str, o: dict[str, str]) -> str | None:
    """One call, and the value the script queries for, if any."""
    op = (service, operation)
    if op == ("sns", "create-topic"):
        return str(client.create_topic(Name=o["name"])["TopicArn"])
    if op == ("sns", "subscribe"):
        return str(
            client.subscribe(
                TopicArn=o["topic-arn"],
                Protocol=o["protocol"],
                Endpoint=o["notification-endpoint"],
                Attributes=shorthand(o.get("attributes", "")),
                ReturnSubscriptionArn=True,
            )["SubscriptionArn"]
        )
    if op == ("sqs", "create-queue"):
        return str(client.create_queue(QueueName=o["queue-name"])["QueueUrl"])
    if op == ("sqs", "get-queue-attributes"):
        name = o["attribute-names"]
        answer = client.get_queue_attributes(QueueUrl=o["queue-url"], AttributeNames=[name])
        return str(answer["Attributes"][name])
    if op == ("sqs", "set-queue-attributes"):
        client.set_queue_attributes(QueueUrl=o["queue-url"], Attributes=json.loads(o["attributes"]))
    elif op == ("s3api", "head-bucket"):
        client.head_bucket(Bucket=o["bucket"])
    elif op == ("s3api", "create-bucket"):
        location = shorthand(o.get("create-bucket-configuration", ""))
        extra = {"CreateBucketConfiguration": location} if location else {}
        client.create_bucket(Bucket=o["bucket"], **extra)
    elif op == ("s3api", "put-bucket-encryption"):
        config = json.loads(o["server-side-encryption-configuration"])
        client.put_bucket_encryption(Bucket=o["bucket"], ServerSideEncryptionConfiguration=config)
    elif op == ("s3api", "put-public-access-block"):
        given = shorthand(o["public-access-block-configuration"])
        flags = {name: value == "true" for name, value in given.items()}
        client.put_public_access_block(Bucket=o["bucket"], PublicAccessBlockConfiguration=flags)
    elif op == ("s3api", "put-bucket-lifecycle-configuration"):
        config = json.loads(o["lifecycle-configuration"])
        client.put_bucket_lifecycle_configuration(Bucket=o["bucket"], LifecycleConfiguration=config)
    else:
        raise SystemExit(f"moto_aws: {service} {operation} is not one the init script makes")
    return None


def main(argv: list[str]) -> int:
    service, operation, options = parse(argv)
    client = boto3.client(
        "s3" if service == "s3api" else service,  # type: ignore[call-overload]
        endpoint_url=options["endpoint-url"],
        region_name=options["region"],
    )
    try:
        answer = call(client, service, operation, options)
    except botocore.exceptions.ClientError as error:
        print(f"An error occurred: {error}", file=sys.stderr)
        return CLI_CALL_FAILED
    if answer is not None:
        print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
