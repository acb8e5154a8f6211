#!/usr/bin/env bash
# Smoke test of a built image against LocalStack, as CI runs it:
#
#   AWS_CMD="aws --endpoint-url http://localhost:4566" deploy/localstack/init-resources.sh
#   deploy/ci/smoke-image.sh claude-code-scheduler:ci
#
# The container runs read-only as on ECS, configured only through environment
# variables, in mock mode. It must: run the node as root (which starts each run
# under a uid of its own, docs/isolation.md) with the pinned CLI, the run uids'
# passwd entries, git, git-lfs, an ssh client and CA certificates (for git
# workspaces, docs/workspaces.md) and no Node.js; become healthy; take one
# RunTask from the command topic to TaskCompleted with its log in S3 (the run
# ran as uid 10100, or the node would have refused to start); and exit 0 on
# SIGTERM after NodeDeregistered.
#
# Environment: LOCALSTACK_ENDPOINT (default http://localhost:4566).
set -euo pipefail

image=${1:?usage: $0 IMAGE}
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
endpoint=${LOCALSTACK_ENDPOINT:-http://localhost:4566}
region=us-east-1
account=000000000000
prefix=claude-code-scheduler
command_topic_arn="arn:aws:sns:$region:$account:$prefix-command-topic"
control_bus_arn="arn:aws:sns:$region:$account:$prefix-control-bus"
node_queue_url="$endpoint/$account/$prefix-node-queue"
server_queue_url="$endpoint/$account/$prefix-server-queue"
log_bucket="$prefix-logs"
run_id="smoke-$(date +%s)-$$"
container="claude-code-scheduler-smoke-$$"

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=$region
awscli() { aws --endpoint-url "$endpoint" --region "$region" "$@"; }
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
say() { echo "smoke: $*" >&2; }

cleanup() {
    docker logs "$container" >&2 2>&1 || true
    docker rm -f "$container" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Host networking: the container reaches LocalStack at the same URL as this script.
docker run --detach --name "$container" --network host --read-only \
    --health-interval 5s --health-start-period 5s --health-retries 3 \
    -e AWS_ENDPOINT_URL="$endpoint" \
    -e AWS_REGION="$region" \
    -e AWS_ACCESS_KEY_ID=test \
    -e AWS_SECRET_ACCESS_KEY=test \
    -e CLAUDE_NODE_QUEUE_URL="$node_queue_url" \
    -e CLAUDE_NODE_TOPIC_ARN="$control_bus_arn" \
    -e CLAUDE_NODE_LOG_BUCKET="$log_bucket" \
    -e CLAUDE_NODE_MOCK_MODE=true \
    -e CLAUDE_NODE_HEARTBEAT_INTERVAL=5 \
    -e CLAUDE_NODE_POLL_WAIT_SECONDS=2 \
    -e CLAUDE_NODE_VERBOSE=1 \
    "$image" >/dev/null

say "runs the node as root, has the run uids, the pinned CLI and no Node.js"
[[ "$(docker exec "$container" id -u)" == 0 ]] || fail "the node does not run as root"
[[ "$(docker exec "$container" id -u claude-run-0)" == 10100 ]] || fail "no passwd entry for uid 10100"
[[ "$(docker exec "$container" id -u claude-run-31)" == 10131 ]] || fail "no passwd entry for uid 10131"
[[ "$(docker exec "$container" stat -c %a:%u /work)" == 711:0 ]] || fail "/work is not root's, mode 0711"
docker exec "$container" claude --version | grep -qF "$(tr -d '[:space:]' < "$repo/claude-code.version")" \
    || fail "claude --version is not the pinned version"
docker exec "$container" sh -c 'command -v bwrap && command -v socat' >/dev/null \
    || fail "bwrap and socat (for --bash-sandbox) are not in the image"
docker exec "$container" git --version | grep -q '^git version ' || fail "git is not in the image"
docker exec "$container" ssh -V 2>&1 | grep -q '^OpenSSH_' || fail "the ssh client is not in the image"
docker exec "$container" git lfs version | grep -q '^git-lfs/' || fail "git-lfs is not in the image"
docker exec "$container" test -s /etc/ssl/certs/ca-certificates.crt || fail "no CA certificates in the image"
if docker exec "$container" sh -c 'command -v node npm' >/dev/null; then
    fail "Node.js is in the runtime image"
fi

say "becomes healthy"
for _ in $(seq 60); do
    status="$(docker inspect --format '{{.State.Health.Status}}' "$container")"
    [[ $status == healthy ]] && break
    [[ "$(docker inspect --format '{{.State.Running}}' "$container")" == true ]] \
        || fail "the container stopped"
    sleep 1
done
[[ $status == healthy ]] || fail "not healthy after 60 s (status $status)"

say "runs a task from the command topic"
awscli sns publish --topic-arn "$command_topic_arn" --output text --query MessageId \
    --message "{\"type\":\"RunTask\",\"version\":1,\"run_id\":\"$run_id\",\"task\":{\"prompt\":\"smoke test\",\"mock\":{\"duration_seconds\":1,\"output_bytes\":5000}}}" \
    >/dev/null
completed=""
for _ in $(seq 30); do
    events="$(awscli sqs receive-message --queue-url "$server_queue_url" \
        --max-number-of-messages 10 --wait-time-seconds 2 --message-attribute-names All \
        --query 'Messages[].[MessageAttributes.event_type.StringValue, MessageAttributes.run_id.StringValue]' \
        --output text)"
    if grep -q "^TaskCompleted[[:space:]]$run_id\$" <<< "$events"; then
        completed=yes
        break
    fi
    grep -q "^TaskFailed[[:space:]]$run_id\$" <<< "$events" && fail "TaskFailed for $run_id"
done
[[ -n $completed ]] || fail "no TaskCompleted for $run_id within 60 s"
size="$(awscli s3api head-object --bucket "$log_bucket" --key "logs/$run_id.log" \
    --query ContentLength --output text)" || fail "no S3 log for $run_id"
[[ $size -ge 5000 ]] || fail "the S3 log has $size bytes, expected at least 5000"

docker logs "$container" 2>&1 | grep -q "each run slot has a uid of its own" \
    || fail "the node does not say it isolates runs"

say "stops cleanly on SIGTERM"
docker stop --time 60 "$container" >/dev/null
code="$(docker inspect --format '{{.State.ExitCode}}' "$container")"
[[ $code == 0 ]] || fail "exit status $code after SIGTERM"
docker logs "$container" 2>&1 | grep -q "node deregistered" || fail "no deregistration in the log"

say "passed"
