"""A stand-in for `awslocal` that records the calls the init script makes.

Usage (as the script's AWS_CMD): python fake_aws.py STATE_DIR [aws arguments...]

Each call is appended to STATE_DIR/calls.jsonl as {"service", "operation",
"options"}. It answers the few queries whose output the script reads, the way
LocalStack would, and remembers buckets so a second run sees them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ACCOUNT = "000000000000"
SERVICES = ("sns", "sqs", "s3api")


def parse(args: list[str]) -> tuple[str, str, dict[str, str]]:
    options: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
            options[arg[2:]] = value
            i += 2 if value else 1
        else:
            positional.append(arg)
            i += 1
    service = next(p for p in positional if p in SERVICES)
    operation = positional[positional.index(service) + 1]
    return service, operation, options


def main(argv: list[str]) -> int:
    state = Path(argv[0])
    service, operation, options = parse(argv[1:])
    with (state / "calls.jsonl").open("a") as calls:
        calls.write(json.dumps({"service": service, "operation": operation, "options": options}))
        calls.write("\n")
    region = options.get("region", "us-east-1")
    buckets = state / "buckets"
    buckets.mkdir(exist_ok=True)
    if (service, operation) == ("sns", "create-topic"):
        print(f"arn:aws:sns:{region}:{ACCOUNT}:{options['name']}")
    elif (service, operation) == ("sqs", "create-queue"):
        print(f"http://localhost:4566/{ACCOUNT}/{options['queue-name']}")
    elif (service, operation) == ("sqs", "get-queue-attributes"):
        name = options["queue-url"].rsplit("/", 1)[-1]
        print(f"arn:aws:sqs:{region}:{ACCOUNT}:{name}")
    elif (service, operation) == ("sns", "subscribe"):
        print(f"{options['topic-arn']}:00000000-0000-0000-0000-000000000000")
    elif (service, operation) == ("s3api", "head-bucket"):
        if not (buckets / options["bucket"]).exists():
            print("An error occurred (404) when calling the HeadBucket operation", file=sys.stderr)
            return 254
    elif (service, operation) == ("s3api", "create-bucket"):
        (buckets / options["bucket"]).touch()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
