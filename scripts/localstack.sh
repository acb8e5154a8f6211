#!/usr/bin/env bash
# Runs LocalStack on this host without Docker; scripts/localstack_host.py does
# the work (`scripts/localstack.sh --help`, docs/localstack.md). This name stays
# for the callers that have it (CI, docs, AWS_CMD="scripts/localstack.sh aws").
exec python3 "$(dirname "${BASH_SOURCE[0]}")/localstack_host.py" "$@"
