"""AWS quotas the code depends on, each named once, with where it comes from."""

# SQS: a message stays invisible for at most 12 hours from its first receipt
# (ChangeMessageVisibility, "Visibility timeout" quota). A run may last no longer.
MAX_VISIBILITY_SECONDS = 12 * 60 * 60
# SQS ReceiveMessage: WaitTimeSeconds is 0 to 20, MaxNumberOfMessages 1 to 10.
MAX_POLL_WAIT_SECONDS = 20
MAX_RECEIVE_BATCH = 10
# SNS Publish: body and attributes together at most 256 KiB (262,144 bytes).
SNS_MAX_MESSAGE_BYTES = 256 * 1024
# SNS PublishBatch: at most 10 entries, and all their bodies and attributes
# together at most what one Publish may carry. It needs sns:Publish, like Publish.
SNS_MAX_BATCH_ENTRIES = 10
SNS_MAX_BATCH_BYTES = SNS_MAX_MESSAGE_BYTES
# ECS task scale-in protection: ExpiresInMinutes is 1 to 2880 (48 hours).
ECS_MAX_PROTECTION_MINUTES = 2880
