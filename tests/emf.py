"""The CloudWatch Embedded Metric Format, as AWS specifies it, to check the
node's EMF lines against.

Source: "Specification: Embedded metric format", Amazon CloudWatch User Guide,
https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html

EMF_SCHEMA is the JSON schema the specification publishes (its section
"Embedded metric format JSON schema"), with one addition the specification
states in prose: "Unless otherwise noted, objects defined by this
specification MUST NOT contain any additional members" (additionalProperties
false on the metadata, MetricDirective and MetricDefinition objects). What a
JSON schema cannot say, because it links one member to another, is checked by
`assert_valid_emf` after the schema, each rule as the specification's
sections "Root node", "Metadata" and "Target members" state it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema

# CloudWatch's units (the specification's MetricUnit pattern).
UNITS = (
    "Seconds|Microseconds|Milliseconds|Bytes|Kilobytes|Megabytes|Gigabytes|Terabytes|Bits|"
    "Kilobits|Megabits|Gigabits|Terabits|Percent|Count|Bytes/Second|Kilobytes/Second|"
    "Megabytes/Second|Gigabytes/Second|Terabytes/Second|Bits/Second|Kilobits/Second|"
    "Megabits/Second|Gigabits/Second|Terabits/Second|Count/Second|None"
)

EMF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Root Node",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "type": "object",
            "title": "Metadata",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "additionalProperties": False,
            "properties": {
                "Timestamp": {"type": "integer", "title": "The Timestamp Schema"},
                "CloudWatchMetrics": {
                    "type": "array",
                    "title": "MetricDirectives",
                    "items": {
                        "type": "object",
                        "title": "MetricDirective",
                        "required": ["Namespace", "Dimensions", "Metrics"],
                        "additionalProperties": False,
                        "properties": {
                            "Namespace": {
                                "type": "string",
                                "title": "CloudWatch Metrics Namespace",
                                "pattern": "^(.*)$",
                                "minLength": 1,
                                "maxLength": 1024,
                            },
                            "Dimensions": {
                                "type": "array",
                                "title": "The Dimensions Schema",
                                "minItems": 1,
                                "items": {
                                    "type": "array",
                                    "title": "DimensionSet",
                                    "minItems": 0,
                                    "maxItems": 30,
                                    "items": {
                                        "type": "string",
                                        "title": "DimensionReference",
                                        "pattern": "^(.*)$",
                                        "minLength": 1,
                                        "maxLength": 250,
                                    },
                                },
                            },
                            "Metrics": {
                                "type": "array",
                                "title": "MetricDefinitions",
                                "minItems": 1,
                                "maxItems": 100,
                                "items": {
                                    "type": "object",
                                    "title": "MetricDefinition",
                                    "required": ["Name"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "Name": {
                                            "type": "string",
                                            "title": "MetricName",
                                            "pattern": "^(.*)$",
                                            "minLength": 1,
                                            "maxLength": 1024,
                                        },
                                        "Unit": {
                                            "type": "string",
                                            "title": "MetricUnit",
                                            "pattern": f"^({UNITS})$",
                                        },
                                        "StorageResolution": {
                                            "type": "integer",
                                            "title": "StorageResolution",
                                            "enum": [1, 60],
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}

_VALIDATOR = jsonschema.Draft7Validator(EMF_SCHEMA)
# The Timestamp is milliseconds after Jan 1, 1970 00:00:00 UTC, and CloudWatch
# takes metrics up to two weeks old: a value in seconds (or microseconds) is
# far outside.
_TWO_WEEKS_MS = 14 * 24 * 3600 * 1000


def parse_emf_line(line: str) -> dict[str, Any]:
    """The log event must be one valid JSON object, with nothing before or
    after it in the message."""
    document = json.loads(line)
    assert isinstance(document, dict), f"not a JSON object: {line!r}"
    assert line == line.strip(), f"data around the JSON object: {line!r}"
    return document


def assert_valid_emf(document: dict[str, Any]) -> None:
    errors = sorted(_VALIDATOR.iter_errors(document), key=str)
    assert not errors, f"not an EMF document: {errors[0].message} at {list(errors[0].path)}"
    stamp = document["_aws"]["Timestamp"]
    assert abs(stamp - time.time() * 1000) < _TWO_WEEKS_MS, f"Timestamp {stamp} is not in ms"
    for directive in document["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for key in dimension_set:
                # The root node must hold every target member the directive
                # refers to; a dimension's is a string (a CloudWatch
                # dimension value: 1 to 1024 characters).
                value = document.get(key)
                assert isinstance(value, str), f"dimension {key!r} has no string member"
                assert 0 < len(value) <= 1024, f"dimension {key!r} = {value!r}"
        for metric in directive["Metrics"]:
            name = metric["Name"]
            assert name in document, f"metric {name!r} has no member on the root node"
            value = document[name]
            # A metric's member is a number, or an array of at most 100 numbers.
            values = value if isinstance(value, list) else [value]
            assert 0 < len(values) <= 100, f"metric {name!r} has {len(values)} values"
            for number in values:
                assert isinstance(number, int | float) and not isinstance(number, bool), (
                    f"metric {name!r} = {number!r} is not a number"
                )
