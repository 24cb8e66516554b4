"""deploy.py's command line: its verbs listed from the command table, settings from file,
environment and options, and every user or AWS error as one line with the fix."""

from __future__ import annotations

import pytest

import deploy
from deployment import cli, settings as deploy_settings
from deployment.commands import COMMANDS
from deployment.errors import describe_error
from tests.deployment.conftest import ACCOUNT, REGION, REPO, run


def test_the_help_lists_every_verb_of_the_command_table(capsys):
    """The verb list is generated: a verb added to deployment/commands shows up in --help (the
    hand-typed list it replaces had lost monitor)."""
    with pytest.raises(SystemExit):
        deploy.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for command in COMMANDS:
        assert command.NAME in cli.description() and f"{command.NAME} {command.HELP}" in help_text
    assert "monitor" in help_text
    assert "deploy.py --help" in deploy.__doc__


def test_hyperparameter_values_are_checked_before_any_aws_call(aws, capsys):
    """deploy.py reads train/hyperparameters.py, the job's own schema: a bad value is one line
    naming the key and the accepted values, and no request reaches AWS."""
    code, out, err = run(capsys, "train", "--no-wait", "--hp", "lr=abc")
    assert code == 1 and err.count("\n") == 1, err
    assert "'lr' = 'abc' is not valid: expected a number > 0 and <= 10" in err
    assert not aws.calls
    code, out, err = run(capsys, "tune", "--no-wait", "--hp", "arch=resnet51")
    assert code == 1 and "a torchvision classification model name" in err and not aws.calls


def test_image_missing_from_ecr_is_one_line(aws, capsys):
    code, _, err = run(capsys, "train", "--no-wait", "--image",
                       f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{REPO}:nope")
    assert code == 1 and "is not in ECR" in err and "build_and_push.sh" in err
    assert err.count("\n") == 1


def test_missing_role_is_one_line(aws, capsys, monkeypatch):
    monkeypatch.delenv("DEPLOY_ROLE")
    code, _, err = run(capsys, "train", "--no-wait")
    assert code == 1 and err.startswith("error: no IAM role") and err.count("\n") == 1


def test_no_credentials_is_one_line(capsys, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, _, err = run(capsys, "delete", "--endpoint", "x")
    assert code == 1 and "no AWS credentials" in err and err.count("\n") == 1


def test_settings_file_then_environment_then_options(monkeypatch, tmp_path):
    example = deploy_settings.ROOT / "deploy.example.toml"
    settings = deploy_settings.load_settings(str(example))
    assert settings["role"].startswith("arn:aws:iam::") and settings["region"] == "eu-west-1"
    monkeypatch.setenv("DEPLOY_ENDPOINT", "from-env")
    assert deploy_settings.load_settings(str(example))["endpoint"] == "from-env"
    bad = tmp_path / "bad.toml"
    bad.write_text('rgion = "x"\n')
    with pytest.raises(deploy_settings.UserError, match="unknown key"):
        deploy_settings.load_settings(str(bad))


@pytest.mark.parametrize("operation, code, message, expected", [
    ("InvokeEndpoint", "ValidationException", "Endpoint dogs-ep of account 1 not found.",
     "python deploy.py deploy"),
    ("CreateTrainingJob", "ResourceLimitExceeded", "The account-level service limit "
     "'ml.g5.xlarge for spot training job usage' is 0 Instances", "Service Quotas"),
    ("PutObject", "AccessDenied", "Access Denied", "cannot be written"),
    ("CreateEndpoint", "ValidationException", "Cannot create already existing endpoint",
     "the AWS message says what to change"),
])
def test_aws_errors_become_one_line_with_a_fix(operation, code, message, expected):
    from botocore.exceptions import ClientError

    exc = ClientError({"Error": {"Code": code, "Message": message}}, operation)
    line = describe_error(exc)
    assert line.startswith(f"{operation} failed ({code})") and expected in line
    assert "\n" not in line


def test_a_bug_keeps_its_traceback():
    assert describe_error(KeyError("x")) is None


def test_image_pushed_to_another_region_is_one_line_naming_both(aws, capsys):
    import json

    import boto3

    ecr = boto3.client("ecr", region_name="eu-west-1")
    ecr.create_repository(repositoryName=REPO)
    ecr.put_image(repositoryName=REPO, imageTag="v2", imageManifest=json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "config": {}, "layers": []}))
    code, _, err = run(capsys, "train", "--no-wait", "--image",
                       f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{REPO}:v2")
    assert code == 1 and err.count("\n") == 1, err
    assert f"is not in ECR in {REGION}" in err and f"{REPO}:v2 is in eu-west-1" in err
    assert "--region eu-west-1" in err and f"DEPLOY_REGION={REGION}" in err


def test_docs_cli_md_is_the_parsers_help():
    """docs/cli.md is generated (python -m deployment.cli --markdown): a changed option fails
    here until the page is made again."""
    from deployment.cli import markdown
    from tests.conftest import ROOT

    assert (ROOT / "docs" / "cli.md").read_text() == markdown()


def test_help_shows_each_default_once():
    from deployment.cli import markdown

    page = markdown()
    assert "--max-jobs MAX_JOBS           (default: 12)" in page
    assert "--instance-type TYPE" in page and "ENDPOINT_INSTANCE_TYPE" not in page
    assert "(default: None)" not in page and "default: the last one) (default" not in page
