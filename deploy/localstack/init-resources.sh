#!/usr/bin/env bash
# Creates on LocalStack the bus that deploy/cloudformation/messaging.yaml creates
# on AWS, with the same names and the same settings:
#
#   SNS claude-code-scheduler-command-topic --> SQS claude-code-scheduler-node-queue
#       (raw delivery; dead letters to claude-code-scheduler-node-queue-dlq after 3 receives)
#   SNS claude-code-scheduler-control-bus   --> SQS claude-code-scheduler-server-queue (raw delivery)
#   S3  claude-code-scheduler-logs              (SSE-S3, public access blocked, logs/ expire)
#
# Two deliberate differences from the CloudFormation template:
# - the bucket name is plain here; on AWS bucket names are global, so the
#   template appends -<account id>-<region>;
# - no TLS-only (aws:SecureTransport) policies: LocalStack speaks plain HTTP.
#
# It runs as a LocalStack ready.d hook (docker-compose.yml mounts it into
# /etc/localstack/init/ready.d), where `awslocal` is on PATH. On the host,
# choose the command with AWS_CMD:
#
#   AWS_CMD="scripts/localstack.sh aws" deploy/localstack/init-resources.sh
#   AWS_CMD="aws --endpoint-url http://localhost:4566" deploy/localstack/init-resources.sh
#
# (plain `aws` needs credentials in the environment; LocalStack accepts any,
# e.g. AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test).
#
# Idempotent: a second run finds everything in place and changes nothing.
#
# On stdout it prints, as NAME=value lines (progress goes to stderr), what a node
# and the client commands (submit, events, nodes) need, so that
#
#   eval "$(AWS_CMD=... deploy/localstack/init-resources.sh | sed 's/^/export /')"
#
# configures a shell for both: AWS_REGION, AWS_ENDPOINT_URL, the command topic
# (CLAUDE_COMMAND_TOPIC_ARN, where submit publishes), the control bus (as
# CLAUDE_CONTROL_BUS_ARN for the client's readers and CLAUDE_NODE_TOPIC_ARN for
# the node), CLAUDE_NODE_QUEUE_URL and CLAUDE_NODE_LOG_BUCKET. Credentials are
# not among them. Nor is the server queue: given CLAUDE_SERVER_QUEUE_URL, events,
# nodes and submit --wait read that queue and DELETE what they read, taking the
# events from the scheduler that owns it. Its URL goes to stderr, for that
# scheduler.
#
# AWS_ENDPOINT_URL is the endpoint AWS_CMD sends its requests to:
# - ENDPOINT_URL, when set;
# - else the URL after --endpoint-url in AWS_CMD;
# - else, for AWS_CMD="scripts/localstack.sh aws" (or scripts/localstack_host.py
#   aws), what that command's `endpoint` prints;
# - else, for awslocal (the ready.d hook in the compose file's container),
#   http://localhost:4566, where compose publishes LocalStack on the host.
# With none of these it stops before creating anything: set ENDPOINT_URL.
#
# Environment: AWS_CMD (default awslocal); ENDPOINT_URL; RESOURCE_PREFIX (default
# claude-code-scheduler); AWS_DEFAULT_REGION or AWS_REGION (default us-east-1).
set -euo pipefail

read -r -a AWS_COMMAND <<< "${AWS_CMD:-awslocal}"
if ! command -v "${AWS_COMMAND[0]:-}" >/dev/null 2>&1; then
    echo "init-resources: '${AWS_COMMAND[0]:-}' not found; set AWS_CMD (see the top of $0)" >&2
    exit 127
fi

# The endpoint to print; the rule is at the top of this script.
endpoint_url() {
    local i n=${#AWS_COMMAND[@]}
    if [[ -n ${ENDPOINT_URL:-} ]]; then
        echo "$ENDPOINT_URL"
        return
    fi
    for ((i = 0; i < n; i++)); do
        case ${AWS_COMMAND[i]} in
            --endpoint-url=*)
                echo "${AWS_COMMAND[i]#*=}"
                return
                ;;
            --endpoint-url)
                echo "${AWS_COMMAND[i + 1]:-}"
                return
                ;;
        esac
    done
    if ((n >= 2)) && [[ ${AWS_COMMAND[n - 1]} == aws ]] &&
        [[ ${AWS_COMMAND[n - 2]} == *localstack.sh || ${AWS_COMMAND[n - 2]} == *localstack_host.py ]]; then
        "${AWS_COMMAND[@]:0:n-1}" endpoint
        return
    fi
    if [[ ${AWS_COMMAND[0]##*/} == awslocal ]]; then
        echo "http://localhost:4566"
        return
    fi
    echo "init-resources: cannot tell where '${AWS_CMD:-}' sends its requests; set ENDPOINT_URL (see the top of $0)" >&2
    return 2
}
endpoint="$(endpoint_url)" || exit
prefix="${RESOURCE_PREFIX:-claude-code-scheduler}"
region="${AWS_DEFAULT_REGION:-${AWS_REGION:-us-east-1}}"

# Keep these in step with the defaults in deploy/cloudformation/messaging.yaml.
node_queue_visibility_timeout=120
max_receive_count=10  # as messaging.yaml, which says why
node_queue_retention_seconds=345600     # 4 days
dlq_retention_seconds=1209600           # 14 days, the SQS maximum
server_queue_retention_seconds=345600   # 4 days
log_retention_days=90

command_topic="$prefix-command-topic"
control_bus="$prefix-control-bus"
node_queue="$prefix-node-queue"
node_dlq="$prefix-node-queue-dlq"
server_queue="$prefix-server-queue"
log_bucket="$prefix-logs"

awscli() { "${AWS_COMMAND[@]}" --region "$region" --output text "$@"; }
say() { echo "init-resources: $*" >&2; }

# A JSON string literal for $1 (the values here hold no control characters).
json_string() {
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}

# A JSON object from name value pairs, every value a string, as SQS wants
# its attributes.
json_attributes() {
    local out="" sep=""
    while (($#)); do
        out+="$sep$(json_string "$1"):$(json_string "$2")"
        sep=","
        shift 2
    done
    printf '{%s}' "$out"
}

create_topic() { awscli sns create-topic --name "$1" --query TopicArn; }

create_queue() { awscli sqs create-queue --queue-name "$1" --query QueueUrl; }

queue_arn() {
    awscli sqs get-queue-attributes --queue-url "$1" --attribute-names QueueArn \
        --query Attributes.QueueArn
}

set_queue_attributes() {
    local url=$1
    shift
    awscli sqs set-queue-attributes --queue-url "$url" --attributes "$(json_attributes "$@")" \
        >/dev/null
}

# Only this topic may send to the queue (SNS delivery); see messaging.yaml.
topic_only_policy() {
    local queue_arn=$1 topic_arn=$2
    printf '{"Version":"2012-10-17","Statement":[{"Sid":"OnlyFromTopic","Effect":"Allow",'
    printf '"Principal":{"Service":"sns.amazonaws.com"},"Action":"sqs:SendMessage",'
    printf '"Resource":"%s","Condition":{"ArnEquals":{"aws:SourceArn":"%s"}}}]}' \
        "$queue_arn" "$topic_arn"
}

# Raw delivery: the SQS body is the published JSON itself and the SNS message
# attributes arrive as SQS message attributes. SNS allows 256 KiB and a
# TaskOutput event comes close; wrapped and escaped in an envelope it could
# outgrow what the queue accepts.
subscribe() {
    local topic_arn=$1 queue_arn=$2
    awscli sns subscribe --topic-arn "$topic_arn" --protocol sqs \
        --notification-endpoint "$queue_arn" \
        --attributes RawMessageDelivery=true --query SubscriptionArn >/dev/null
}

say "topics"
command_topic_arn="$(create_topic "$command_topic")"
control_bus_arn="$(create_topic "$control_bus")"

say "queues"
# Create first, then set attributes: CreateQueue with attributes that differ
# from an existing queue's fails, SetQueueAttributes does not.
node_dlq_url="$(create_queue "$node_dlq")"
set_queue_attributes "$node_dlq_url" \
    SqsManagedSseEnabled true \
    MessageRetentionPeriod "$dlq_retention_seconds"
node_dlq_arn="$(queue_arn "$node_dlq_url")"

node_queue_url="$(create_queue "$node_queue")"
node_queue_arn="$(queue_arn "$node_queue_url")"
set_queue_attributes "$node_queue_url" \
    SqsManagedSseEnabled true \
    VisibilityTimeout "$node_queue_visibility_timeout" \
    ReceiveMessageWaitTimeSeconds 20 \
    MessageRetentionPeriod "$node_queue_retention_seconds" \
    RedrivePolicy "$(printf '{"deadLetterTargetArn":"%s","maxReceiveCount":%d}' \
        "$node_dlq_arn" "$max_receive_count")" \
    Policy "$(topic_only_policy "$node_queue_arn" "$command_topic_arn")"

server_queue_url="$(create_queue "$server_queue")"
server_queue_arn="$(queue_arn "$server_queue_url")"
set_queue_attributes "$server_queue_url" \
    SqsManagedSseEnabled true \
    MessageRetentionPeriod "$server_queue_retention_seconds" \
    Policy "$(topic_only_policy "$server_queue_arn" "$control_bus_arn")"

say "subscriptions"
subscribe "$command_topic_arn" "$node_queue_arn"
subscribe "$control_bus_arn" "$server_queue_arn"

say "log bucket"
if ! awscli s3api head-bucket --bucket "$log_bucket" >/dev/null 2>&1; then
    if [[ $region == us-east-1 ]]; then
        awscli s3api create-bucket --bucket "$log_bucket" >/dev/null
    else
        awscli s3api create-bucket --bucket "$log_bucket" \
            --create-bucket-configuration "LocationConstraint=$region" >/dev/null
    fi
fi
awscli s3api put-bucket-encryption --bucket "$log_bucket" \
    --server-side-encryption-configuration \
    '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"}}]}' >/dev/null
awscli s3api put-public-access-block --bucket "$log_bucket" \
    --public-access-block-configuration \
    BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true \
    >/dev/null
awscli s3api put-bucket-lifecycle-configuration --bucket "$log_bucket" \
    --lifecycle-configuration "$(printf '%s' \
        '{"Rules":[' \
        '{"ID":"ExpireRunLogs","Status":"Enabled","Filter":{"Prefix":"logs/"},' \
        "\"Expiration\":{\"Days\":$log_retention_days}}," \
        '{"ID":"ExpireCancelRequests","Status":"Enabled","Filter":{"Prefix":"cancels/"},' \
        '"Expiration":{"Days":30}},' \
        '{"ID":"AbortIncompleteUploads","Status":"Enabled","Filter":{"Prefix":""},' \
        '"AbortIncompleteMultipartUpload":{"DaysAfterInitiation":1}}]}')" >/dev/null

say "done"
say "the scheduler's server queue (not for the client commands): $server_queue_url"
cat <<EOF
AWS_REGION=$region
AWS_ENDPOINT_URL=$endpoint
CLAUDE_COMMAND_TOPIC_ARN=$command_topic_arn
CLAUDE_CONTROL_BUS_ARN=$control_bus_arn
CLAUDE_NODE_TOPIC_ARN=$control_bus_arn
CLAUDE_NODE_QUEUE_URL=$node_queue_url
CLAUDE_NODE_LOG_BUCKET=$log_bucket
EOF
