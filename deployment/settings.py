"""deploy.py's settings and remembered names: where each value comes from, in one place.

Shared settings (region, role, bucket, image, names) come from, in order: the command line, the
environment (``DEPLOY_<NAME>``, e.g. ``DEPLOY_ROLE``), the settings file (``--config``,
``$DEPLOY_CONFIG``, else ``./deploy.toml``; see ``deploy.example.toml``), built-in defaults.
The names of the last job, model and endpoint are kept in out/deploy_state.json, so that one
verb can follow another without repeating them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from deployment import ecr, sessions
from deployment.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
STATE_FILE = ROOT / "out" / "deploy_state.json"
DEFAULT_REPOSITORY = "sagemaker-dog-breeds"
SPLITS = ("train", "valid", "test")

SETTING_DEFAULTS = {
    "region": None,
    "role": None,
    "bucket": None,
    "prefix": "dog-breeds",
    "image": None,
    "repository": DEFAULT_REPOSITORY,
    "tag": "latest",
    "instance_type": "ml.g5.xlarge",
    "instance_count": 1,
    "endpoint": "dog-breeds",
    "endpoint_instance_type": "ml.g5.xlarge",
    "data_dir": "data",
}


def load_settings(path: str | None) -> dict:
    """Settings file values merged over the defaults, then ``DEPLOY_*`` environment variables.

    Raises:
        UserError: a settings file that is not valid TOML, has unknown keys, or was named and
            does not exist.
    """
    values = dict(SETTING_DEFAULTS)
    explicit = path or os.environ.get("DEPLOY_CONFIG")
    file = Path(explicit) if explicit else Path("deploy.toml")
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"settings file {file} is not valid TOML: {exc}") from exc
        unknown = set(data) - set(SETTING_DEFAULTS)
        if unknown:
            raise UserError(f"settings file {file}: unknown key(s) {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(SETTING_DEFAULTS)}")
        values.update(data)
    elif explicit:
        raise UserError(f"settings file {file} does not exist; copy deploy.example.toml there")
    for key in SETTING_DEFAULTS:
        env = os.environ.get("DEPLOY_" + key.upper())
        if env:
            values[key] = env
    if not values["region"]:
        values["region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return values


def load_state() -> dict:
    """The remembered names (``training_job``, ``endpoint``, ...), or {} when none."""
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


def save_state(**changes) -> None:
    """Remember the last job, model and endpoint names in out/deploy_state.json."""
    state = load_state()
    state.update(changes)
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")


def timestamp() -> str:
    """UTC ``YYMMDD-HHMMSS`` for job and model names."""
    return time.strftime("%y%m%d-%H%M%S", time.gmtime())


@dataclass
class Context:
    """Settings plus lazily made AWS sessions."""

    settings: dict
    args: argparse.Namespace
    _sm: object = field(default=None, repr=False)

    def get(self, name: str):
        """The command-line value of ``name`` if given, else the settings' value."""
        value = getattr(self.args, name, None)
        return value if value is not None else self.settings.get(name)

    @property
    def session(self):
        """The SageMaker session (made on first use).

        Raises:
            UserError: no region anywhere.
        """
        if self._sm is None:
            boto = sessions.make_boto_session(self.get("region"))
            if not boto.region_name:
                raise UserError("no AWS region: pass --region, set region in deploy.toml, or "
                                "set AWS_REGION")
            self._sm = sessions.make_sagemaker_session(boto)
        return self._sm

    @property
    def boto(self):
        """The boto3 session under the SageMaker session."""
        return self.session.boto_session

    @property
    def region(self) -> str:
        """The session's region name."""
        return self.boto.region_name

    def account(self) -> str:
        """The caller's AWS account id (an STS call)."""
        return self.boto.client("sts").get_caller_identity()["Account"]

    def bucket(self) -> str:
        """The bucket setting, else the SageMaker default bucket (created if missing)."""
        return self.get("bucket") or self.session.default_bucket()

    def s3_prefix(self) -> str:
        """``s3://BUCKET/PREFIX`` under which data, outputs and checkpoints go."""
        return f"s3://{self.bucket()}/{self.get('prefix').strip('/')}"

    def role(self) -> str:
        """The execution role's ARN (a bare name becomes this account's role ARN).

        Raises:
            UserError: no role anywhere.
        """
        role = self.get("role")
        if not role:
            raise UserError("no IAM role: pass --role arn:aws:iam::ACCOUNT:role/NAME, set role in "
                            "deploy.toml or DEPLOY_ROLE (a SageMaker execution role)")
        if not role.startswith("arn:"):
            role = f"arn:aws:iam::{self.account()}:role/{role}"
        return role

    def image(self, check: bool = True) -> str:
        """The image URI (default: this account's ECR repository), checked to be in ECR.

        Raises:
            UserError: the ECR repository or tag does not exist.
        """
        image = self.get("image")
        if not image:
            image = (f"{self.account()}.dkr.ecr.{self.region}.amazonaws.com/"
                     f"{self.get('repository')}:{self.get('tag')}")
        if check:
            ecr.check_ecr_image(self.boto, image)
        return image
