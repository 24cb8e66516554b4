"""deploy.py's command line: the shared options, one subcommand per module of
deployment/commands, and the error handling that turns user errors into one line."""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

from deployment.commands import COMMANDS  # noqa: E402
from deployment.errors import describe_error  # noqa: E402
from deployment.settings import Context, load_settings  # noqa: E402
from train.hyperparameters import names  # noqa: E402


# --help and docs/cli.md wrap at one width, so the generated page is the same on every terminal.
HELP_WIDTH = 100


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help with each option's default appended where it has one the help text does
    not already say (flags and repeatable options have none)."""

    def __init__(self, prog: str):
        super().__init__(prog, width=HELP_WIDTH, max_help_position=32)

    def add_argument(self, action):
        if (action.option_strings and action.default not in (None, False, True, [],
                                                             argparse.SUPPRESS)
                and "default" not in (action.help or "")):
            action = copy.copy(action)  # the parser's own action keeps its help
            action.help = ((action.help + " ") if action.help else "") + "(default: %(default)s)"
        super().add_argument(action)


def description() -> str:
    """The CLI's description, its verbs listed from the command table (``COMMANDS``)."""
    return ("The workstation side of the dog-breed classifier on Amazon SageMaker: "
            + ", ".join(command.NAME for command in COMMANDS) + ".")


def build_parser() -> argparse.ArgumentParser:
    """The parser: shared settings on every verb, training-job options on those that start one."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("shared settings (else DEPLOY_* env, deploy.toml, defaults)")
    g.add_argument("--config", help="settings file (default ./deploy.toml or $DEPLOY_CONFIG)")
    g.add_argument("--region")
    g.add_argument("--role", help="SageMaker execution role ARN or name")
    g.add_argument("--bucket", help="S3 bucket (default: the SageMaker default bucket)")
    g.add_argument("--prefix", help="S3 key prefix (default dog-breeds)")
    g.add_argument("--image", help="image URI (default: ACCOUNT.dkr.ecr.REGION.amazonaws.com/"
                                   "sagemaker-dog-breeds:latest)")
    g.add_argument("--endpoint", help="endpoint name (default dog-breeds)")

    job = argparse.ArgumentParser(add_help=False)
    j = job.add_argument_group("training job")
    j.add_argument("--job-name")
    j.add_argument("--instance-type")
    j.add_argument("--instance-count", type=int)
    j.add_argument("--volume-size", type=int, default=50, help="GB (default 50)")
    j.add_argument("--max-run", type=int, default=24 * 3600, help="seconds (default 86400)")
    j.add_argument("--max-wait", type=int, default=36 * 3600,
                   help="spot: seconds to wait and run in all (default 129600)")
    j.add_argument("--no-spot", dest="spot", action="store_false", help="on-demand instances")
    j.add_argument("--instance-types", metavar="TYPE,TYPE,...",
                   help="up to 5 instance types in priority order, SageMaker running the job on "
                        "the first with capacity (InstancePreferences; on-demand: with --no-spot)")
    j.add_argument("--retries", type=int, metavar="N",
                   help="SageMaker retries a job that fails on an internal error up to N times, "
                        "1-30 (RetryStrategy; default: none)")
    j.add_argument("--infra-check", action="store_true",
                   help="SageMaker checks the instances' health before the job starts "
                        "(InfraCheckConfig)")
    j.add_argument("--data", help="S3 prefix holding train/ valid/ test/ (default "
                                  "s3://BUCKET/PREFIX/data)")
    j.add_argument("--pretrained", help="S3 URI of a state_dict for the pretrained channel")
    j.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help=f"hyperparameter, repeatable; names: {', '.join(names())}")
    j.add_argument("--no-wait", dest="wait", action="store_false",
                   help="start the job and return")

    p = argparse.ArgumentParser(prog="deploy.py", description=description(),
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    p.verbs = {}  # each verb's parser, for docs/cli.md
    for command in COMMANDS:
        parents = [common, job] if command.JOB_OPTIONS else [common]
        p.verbs[command.NAME] = sub.add_parser(command.NAME, parents=parents, help=command.HELP,
                                               formatter_class=HelpFormatter)
        command.add_arguments(p.verbs[command.NAME])
    return p


def markdown() -> str:
    """docs/cli.md: deploy.py's --help and every verb's, as argparse prints them."""
    parser = build_parser()
    out = ["# deploy.py's command line", "",
           "Generated by `python -m deployment.cli --markdown` from the parser itself "
           "(tests/deployment/test_cli.py keeps it equal); docs/operations.md "
           "says what the verbs are for.", "", "```text", parser.format_help().rstrip(), "```"]
    for name, verb in parser.verbs.items():
        out += ["", f"## {name}", "", "```text", verb.format_help().rstrip(), "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run one verb; returns the exit code (1 with one line on stderr for a user error)."""
    for name in ("sagemaker.config", "sagemaker", "botocore.credentials"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    run = {command.NAME: command.run for command in COMMANDS}[args.command]
    try:
        ctx = Context(load_settings(args.config), args)
        return run(ctx, args)
    except KeyboardInterrupt:
        print("interrupted: what this verb had already started in AWS keeps running there (a "
              "training or tuning job, an endpoint being created or updated); python deploy.py "
              "report, tune --attach or the SageMaker console show it, and aws sagemaker "
              "stop-training-job or delete stop it", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - user errors become one line, bugs keep traces
        line = describe_error(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m deployment.cli --markdown")
    print(markdown(), end="")
