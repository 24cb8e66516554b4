"""deploy.py's command line: the shared options, one subcommand per module of
deployment/commands, and the error handling that turns user errors into one line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

from deployment.commands import COMMANDS  # noqa: E402
from deployment.errors import describe_error  # noqa: E402
from deployment.settings import Context, load_settings  # noqa: E402
from train.hyperparameters import names  # noqa: E402


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

    p = argparse.ArgumentParser(prog="deploy.py", description=description())
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        parents = [common, job] if command.JOB_OPTIONS else [common]
        command.add_arguments(sub.add_parser(command.NAME, parents=parents, help=command.HELP))
    return p


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
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - user errors become one line, bugs keep traces
        line = describe_error(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
