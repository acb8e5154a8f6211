"""Readers for the container and deployment files, shared by the infra tests.

Everything here parses files; nothing talks to Docker or AWS.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from claude_code_scheduler.cli import cli

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
INIT_SCRIPT = REPO / "deploy" / "localstack" / "init-resources.sh"
MESSAGING = REPO / "deploy" / "cloudformation" / "messaging.yaml"
ECS_SERVICE = REPO / "deploy" / "cloudformation" / "ecs-service.yaml"
TASK_DEFINITION = REPO / "deploy" / "ecs" / "task-definition.json"
NODE_POLICY = REPO / "deploy" / "iam" / "node-policy.json"
OPERATOR_POLICY = REPO / "deploy" / "iam" / "operator-policy.json"
WORKFLOWS = REPO / ".github" / "workflows"
DOCKERIGNORE = REPO / ".dockerignore"
CLAUDE_CODE_VERSION_FILE = REPO / "claude-code.version"

# Read by boto3/botocore or by the Claude CLI, not by click options.
AWS_AND_CLI_ENV = frozenset(
    {
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_ENDPOINT_URL_SNS",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "ANTHROPIC_API_KEY",
    }
)


def claude_code_version() -> str:
    return CLAUDE_CODE_VERSION_FILE.read_text().strip()


# --- the node's command line ---------------------------------------------------


# The client's commands: they read the control bus, and submit publishes commands.
CLIENT_COMMANDS = ("submit", "events", "nodes")


def _envvars(param: click.Parameter) -> set[str]:
    envvar = getattr(param, "envvar", None)
    if isinstance(envvar, str):
        return {envvar}
    return set(envvar or ())


def command_envvars(name: str) -> set[str]:
    """Every environment variable an option of `claude-code-scheduler <name>` reads."""
    return {envvar for param in cli.commands[name].params for envvar in _envvars(param)}


def option_envvars(name: str, option: str) -> set[str]:
    """The environment variables one option (by its Python name, e.g.
    server_queue_url) of `claude-code-scheduler <name>` reads."""
    params = [p for p in cli.commands[name].params if p.name == option]
    assert params, f"{name} has no option {option}"
    return _envvars(params[0])


def node_envvars() -> set[str]:
    """What a node container may be configured with: the node's and the
    health check's options, and what boto3 and the CLI read."""
    return command_envvars("node") | command_envvars("healthcheck") | AWS_AND_CLI_ENV


def node_option_default(name: str) -> Any:
    for param in cli.commands["node"].params:
        if isinstance(param, click.Option) and param.name == name:
            return param.default
    raise KeyError(name)


def setting(env: dict[str, Any], envvar: str, option: str) -> float:
    """The value a node gets for `option` from this environment, else its default."""
    value = env.get(envvar)
    if value is None:
        value = node_option_default(option)
    return float(expand_default(str(value)))


def expand_default(value: str) -> str:
    """Compose's `${NAME:-default}` as it resolves with NAME unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def seconds(duration: str | int | float) -> float:
    """A compose duration (`60s`, `1m30s`, `90`) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    if not total and re.fullmatch(r"\d+(\.\d+)?", duration):
        total = float(duration)
    return total


def assignments(text: str) -> dict[str, str]:
    """NAME=value lines, as deploy/localstack/init-resources.sh prints them."""
    pairs = (line.split("=", 1) for line in text.splitlines() if line)
    return {name: value for name, value in pairs}


# --- docker-compose.yml --------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {p[0]: (p[1] if len(p) > 1 else None) for p in pairs}
    return dict(env)


# --- CloudFormation ------------------------------------------------------------


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags, read as their long forms."""


def _cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def cfn_template(path: Path) -> dict[str, Any]:
    # A SafeLoader subclass: it builds plain data only.
    data = yaml.load(path.read_text(), Loader=CfnLoader)
    assert isinstance(data, dict)
    return data


def parameter_defaults(template: dict[str, Any]) -> dict[str, Any]:
    return {
        name: spec["Default"]
        for name, spec in template.get("Parameters", {}).items()
        if "Default" in spec
    }


def resolve(value: Any, template: dict[str, Any]) -> Any:
    """Resolve what can be resolved from the template alone: parameter
    defaults, !Sub on them, and !Ref to a parameter. Pseudo parameters
    (${AWS::AccountId}) and other functions are left as they are."""
    params = parameter_defaults(template)
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in params:
        return params[value["Ref"]]
    if isinstance(value, dict) and set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            return str(params[name]) if name in params else match.group(0)

        return re.sub(r"\$\{([A-Za-z0-9:]+)\}", substitute, value["Fn::Sub"])
    return value


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource.get("Properties", {})
        for name, resource in template["Resources"].items()
        if resource["Type"] == kind
    }


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy_actions(document: dict[str, Any]) -> set[str]:
    return {
        action
        for statement in document["Statement"]
        if statement["Effect"] == "Allow"
        for action in as_list(statement["Action"])
    }


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# --- the messaging model: what exists once a deployment is done ----------------


@dataclass
class Bus:
    """Topics, queues (with their attributes), subscriptions and the bucket."""

    topics: set[str] = field(default_factory=set)
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (topic, queue) -> raw message delivery
    subscriptions: dict[tuple[str, str], bool] = field(default_factory=dict)
    # queue -> topics its policy lets send
    queue_senders: dict[str, set[str]] = field(default_factory=dict)
    bucket: str = ""
    bucket_settings: dict[str, Any] = field(default_factory=dict)


def arn_name(arn: str) -> str:
    return arn.rsplit(":", 1)[-1]


def senders(policy: dict[str, Any]) -> set[str]:
    """Topics (by name) that a queue policy lets SNS deliver from."""
    names = set()
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        source = statement.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn")
        if source is not None:
            names.add(arn_name(source) if isinstance(source, str) else str(source))
    return names


# --- the Dockerfile ------------------------------------------------------------


@dataclass
class Instruction:
    stage: str
    keyword: str
    arguments: str


def dockerfile() -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    instructions = []
    stage = ""
    for line in lines:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            stage = words[words.index("AS") + 1] if "AS" in words else words[-1]
        instructions.append(Instruction(stage, keyword, arguments.strip()))
    return instructions


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not exec form: {arguments}"
    return [str(v) for v in value]


def shell_words(arguments: str) -> list[str]:
    return shlex.split(arguments)
