"""deployment/options.py: the command line's options become typed values once, and deployment's
library modules take those, never argparse's Namespace (issue 36's shape)."""

from __future__ import annotations

import ast
from pathlib import Path

from deployment.cli import build_parser
from deployment.options import AsyncOptions, TrainingLimits, UpdateOptions

ROOT = Path(__file__).resolve().parents[2]
# The command line's own modules: the parser, the verbs, the settings file's merge.
COMMAND_LINE = {"cli.py", "options.py", "settings.py"}


def test_update_options_are_read_once_with_each_verbs_defaults():
    args = build_parser().parse_args([
        "update", "--model-data", "s3://b/m.tar.gz", "--instance-type", "ml.c7i.xlarge",
        "--instance-count", "3", "--workers", "2", "--alarm", "a", "--alarm", "b",
        "--strategy", "linear", "--no-wait"])
    o = UpdateOptions.from_args(args)
    assert (o.variant.instance_type, o.variant.instance_count, o.variant.serverless) == (
        "ml.c7i.xlarge", 3, False)
    assert o.artifact.model_data == "s3://b/m.tar.gz" and o.artifact.training_job is None
    assert o.serving.workers == 2 and o.serving.max_batch_size is None
    assert o.rollback.alarms == ("a", "b") and not o.rollback.no_rollback
    assert o.strategy.strategy == "linear" and o.wait is False and o.asynchronous is False
    # deploy --update has no strategy options: their defaults.
    deploy = UpdateOptions.from_args(build_parser().parse_args(
        ["deploy", "--update", "--model-data", "s3://b/m.tar.gz"]))
    assert deploy.strategy.strategy == "auto" and deploy.rollback.alarms == ()


def test_async_and_training_options():
    args = build_parser().parse_args(["deploy", "--async", "--sns-error",
                                      "arn:aws:sns:us-east-1:1:e", "--model-data", "s3://b/m"])
    o = AsyncOptions.from_args(args)
    assert o.enabled and o.given() == ["sns_error"]
    limits = TrainingLimits.from_args(build_parser().parse_args(
        ["train", "--max-run", "3600", "--no-spot"]))
    assert limits.max_run == 3600 and limits.spot is False


def test_deployment_library_modules_take_no_command_line():
    """No function of deployment/'s library modules has an ``args`` parameter, but the typed
    options' own ``from_args`` constructors."""
    found = []
    for path in sorted((ROOT / "deployment").glob("*.py")):
        if path.name in COMMAND_LINE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.name != "from_args" and "args" in [a.arg for a in node.args.args]:
                found.append(f"{path.name}:{node.lineno} {node.name}")
    assert not found


def test_renamed_options_keep_their_old_names_with_a_warning(capsys):
    """Concurrency is ``--*-concurrency`` and SNS topics ``--sns-*`` in every verb; the old names
    still parse into the same destination and say which name to use."""
    parser = build_parser()
    for verb, new, old, dest in (("deploy", "--serverless-concurrency", "--max-concurrency",
                                  "max_concurrency"),
                                 ("update", "--serverless-concurrency", "--max-concurrency",
                                  "max_concurrency"),
                                 ("deploy", "--async-concurrency", "--max-concurrent-invocations",
                                  "max_concurrent_invocations"),
                                 ("monitor", "--sns-alarm", "--sns-topic", "sns_topic")):
        value = "arn:aws:sns:eu-west-1:111122223333:t" if dest == "sns_topic" else "7"
        expected = value if dest == "sns_topic" else 7
        assert getattr(parser.parse_args([verb, new, value]), dest) == expected
        assert capsys.readouterr().err == ""
        assert getattr(parser.parse_args([verb, old, value]), dest) == expected
        assert f"warning: {old} is deprecated; use {new}" in capsys.readouterr().err
