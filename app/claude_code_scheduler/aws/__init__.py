"""Everything that talks to AWS: where the clients are made, thin adapters
over SQS, SNS, S3 and the ECS agent, one translator of AWS errors, and the
names and quotas of AWS resources. No logic of the node's lives here."""
