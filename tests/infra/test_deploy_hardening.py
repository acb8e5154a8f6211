"""deploy/cloudformation: what keeps a fleet's data and images safe. Data
outlives its stack, Fargate pulls from a scanned repository, the task's disk
can grow, and the topics are encrypted with a key every publisher may use."""

from __future__ import annotations

from typing import Any

from tests.infra import support

RETAINED = {
    support.MESSAGING: {"AWS::SQS::Queue", "AWS::S3::Bucket"},
    support.ECS_SERVICE: {"AWS::Logs::LogGroup", "AWS::ECR::Repository"},
}


def test_queues_bucket_log_group_and_images_outlive_their_stack() -> None:
    for path, kinds in RETAINED.items():
        template = support.cfn_template(path)
        found = [r for r in template["Resources"].values() if r["Type"] in kinds]
        assert {r["Type"] for r in found} == kinds
        for resource in found:
            assert resource.get("DeletionPolicy") == "Retain", resource["Type"]
            assert resource.get("UpdateReplacePolicy") == "Retain", resource["Type"]


def test_fargate_pulls_from_an_ecr_repository_scanned_on_push(
    ecs_service: dict[str, Any],
) -> None:
    (repository,) = support.resources(ecs_service, "AWS::ECR::Repository").values()
    assert repository["ImageScanningConfiguration"] == {"ScanOnPush": True}
    assert repository["ImageTagMutability"] == "IMMUTABLE"
    outputs = ecs_service["Outputs"]
    assert outputs["ImageRepositoryUri"]["Value"] == {
        "Fn::GetAtt": ["ImageRepository", "RepositoryUri"]
    }
    # ECR pulls are the execution role's, through the AWS managed policy.
    (execution,) = [
        props
        for name, props in support.resources(ecs_service, "AWS::IAM::Role").items()
        if name == "ExecutionRole"
    ]
    assert any(
        "AmazonECSTaskExecutionRolePolicy" in str(arn) for arn in execution["ManagedPolicyArns"]
    )


def test_the_tasks_ephemeral_storage_is_a_parameter(ecs_service: dict[str, Any]) -> None:
    parameter = ecs_service["Parameters"]["EphemeralStorageGiB"]
    # Fargate's bounds; 21 GiB is what a task gets without the setting.
    assert (parameter["MinValue"], parameter["MaxValue"], parameter["Default"]) == (21, 200, 21)
    (task,) = support.resources(ecs_service, "AWS::ECS::TaskDefinition").values()
    assert task["EphemeralStorage"] == {"SizeInGiB": {"Ref": "EphemeralStorageGiB"}}


def test_both_topics_are_encrypted_with_the_stacks_key(messaging: dict[str, Any]) -> None:
    topics = support.resources(messaging, "AWS::SNS::Topic")
    assert len(topics) == 2
    for props in topics.values():
        assert props["KmsMasterKeyId"] == {"Fn::GetAtt": ["TopicKey", "Arn"]}
    assert messaging["Resources"]["TopicKey"]["Properties"]["EnableKeyRotation"] is True


def test_every_publisher_may_use_the_topic_key_and_only_through_sns(
    messaging: dict[str, Any],
) -> None:
    """The node (events), the operator (commands, cancel announcements) and
    the named publishers of any account; each only through SNS, so none can
    decrypt or make data keys with it otherwise."""
    via_sns = {"kms:ViaService": {"Fn::Sub": "sns.${AWS::Region}.amazonaws.com"}}
    key_policy = messaging["Resources"]["TopicKey"]["Properties"]["KeyPolicy"]
    by_sid = {s["Sid"]: s for s in key_policy["Statement"]}
    publishers = by_sid["NamedPublishersThroughSns"]
    assert set(publishers["Action"]) == {"kms:GenerateDataKey", "kms:Decrypt"}
    assert publishers["Condition"]["ArnLike"] == {
        "aws:PrincipalArn": {"Ref": "CommandPublisherArns"}
    }
    assert publishers["Condition"]["StringEquals"] == via_sns

    (node_cfn,) = support.resources(messaging, "AWS::IAM::ManagedPolicy").values()
    node = {s["Sid"]: s for s in node_cfn["PolicyDocument"]["Statement"]}
    assert node["EncryptEvents"]["Resource"] == {"Fn::GetAtt": ["TopicKey", "Arn"]}
    assert node["EncryptEvents"]["Condition"]["StringEquals"] == via_sns
    for path in (support.NODE_POLICY, support.OPERATOR_POLICY):
        kms = [
            s
            for s in support.read_json(path)["Statement"]
            if any(a.startswith("kms:") for a in support.as_list(s["Action"]))
        ]
        assert len(kms) == 1, path.name
        assert set(kms[0]["Action"]) == {"kms:GenerateDataKey", "kms:Decrypt"}
        assert kms[0]["Resource"].endswith(":key/${TopicKeyId}")
        assert kms[0]["Condition"] == {
            "StringEquals": {"kms:ViaService": "sns.${Region}.amazonaws.com"}
        }


def test_the_queues_need_no_kms_key_for_the_topics_to_deliver(messaging: dict[str, Any]) -> None:
    """SNS decrypts before it delivers; a queue encrypted with a KMS key would
    need a key policy for SNS too. SSE-SQS needs none."""
    for props in support.resources(messaging, "AWS::SQS::Queue").values():
        assert props["SqsManagedSseEnabled"] is True
        assert "KmsMasterKeyId" not in props
