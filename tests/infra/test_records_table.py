"""deploy/cloudformation/records.yaml: the Glue table Athena reads run
records with is the RunRecord schema, over the layout the node writes
(aws.records), with partition projection on its date= prefixes. (cfn-lint
lints the template with the others: test_lint_infra.py.)"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from claude_code_scheduler.aws.records import day_prefix
from claude_code_scheduler.protocol import load_schema
from tests.infra import support

RECORDS = support.REPO / "deploy" / "cloudformation" / "records.yaml"
# JSON Schema's types as Hive's (Glue's) column types.
HIVE_TYPES = {"string": "string", "integer": "int", "number": "double", "boolean": "boolean"}


@pytest.fixture(scope="module")
def table() -> dict[str, Any]:
    (properties,) = support.resources(support.cfn_template(RECORDS), "AWS::Glue::Table").values()
    return dict(properties["TableInput"])


def schema_type(spec: dict[str, Any]) -> str:
    if isinstance(spec.get("const"), int):
        return "integer"
    types = spec.get("type", "string")  # an enum of strings
    (kind,) = [str(t) for t in support.as_list(types) if t != "null"] or ["string"]
    return kind


def test_the_columns_are_the_record_schemas_fields(table: dict[str, Any]) -> None:
    schema = load_schema("RunRecord")["properties"]
    columns = {c["Name"]: c["Type"] for c in table["StorageDescriptor"]["Columns"]}
    assert list(columns) == list(schema)
    for name, spec in schema.items():
        kind = schema_type(spec)
        if kind in HIVE_TYPES:
            assert columns[name] == HIVE_TYPES[kind], name
    assert columns["artifact_uris"] == "array<string>"
    usage = columns["usage"]
    for figure in load_schema("RunRecord")["properties"]["usage"]["properties"]:
        assert f"{figure}:" in usage, figure


def test_partition_projection_reads_the_layout_the_node_writes(table: dict[str, Any]) -> None:
    (partition,) = table["PartitionKeys"]
    assert partition == {**partition, "Name": "date", "Type": "string"}
    parameters = table["Parameters"]
    assert parameters["projection.enabled"] == "true"
    assert parameters["projection.date.type"] == "date"
    assert parameters["projection.date.format"] == "yyyy-MM-dd"
    assert parameters["projection.date.interval.unit"] == "DAYS"
    template, variables = parameters["storage.location.template"]["Fn::Sub"]
    assert set(variables) == {"Bucket"}
    # ${!date} is CloudFormation's escape: Athena sees ${date}, a yyyy-MM-dd day.
    athena_sees = template.replace("${!date}", "2026-12-01")
    assert athena_sees == "s3://${Bucket}/" + day_prefix(date(2026, 12, 1))
    serde = table["StorageDescriptor"]["SerdeInfo"]
    assert serde["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"


def test_the_bucket_comes_from_the_messaging_stacks_export() -> None:
    text = RECORDS.read_text()
    messaging = support.cfn_template(support.MESSAGING)
    exported = {
        output["Export"]["Name"]["Fn::Sub"].replace("${AWS::StackName}", "${MessagingStackName}")
        for output in messaging["Outputs"].values()
        if "Export" in output
    }
    assert "${MessagingStackName}-LogBucketName" in exported
    assert text.count('Fn::Sub: "${MessagingStackName}-LogBucketName"') == 2
