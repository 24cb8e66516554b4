"""docs/iam/: the caller's policy covers every call deploy.py makes (the ``aws`` fixture checks
each test's calls against it, tests/deployment/conftest.py), the execution role's policy and
trust are valid, and an AccessDenied names the missing action."""

from __future__ import annotations

import json

from botocore.exceptions import ClientError

from deployment import iam
from deployment.errors import describe_error
from tests.conftest import ROOT

DOCS = ROOT / "docs" / "iam"


def test_the_policy_check_names_what_the_policy_lacks():
    calls = [("sagemaker", "CreateModel"), ("s3", "ListObjectsV2"), ("sts", "GetCallerIdentity"),
             ("application-auto-scaling", "RegisterScalableTarget"),
             ("sagemaker-runtime", "InvokeEndpoint")]
    assert iam.missing(calls) == []
    assert [iam.action(*c) for c in calls] == [
        "sagemaker:CreateModel", "s3:ListBucket", None,
        "application-autoscaling:RegisterScalableTarget", "sagemaker:InvokeEndpoint"]
    assert iam.missing(calls + [("sagemaker", "DeleteDomain"), ("iam", "CreateUser")]) == [
        "iam:CreateUser", "sagemaker:DeleteDomain"]


def test_the_policies_are_valid_documents_and_the_page_shows_them():
    page = (ROOT / "docs" / "iam.md").read_text()
    for name in ("caller-policy.json", "execution-role-policy.json", "execution-role-trust.json"):
        doc = json.loads((DOCS / name).read_text())
        assert doc["Version"] == "2012-10-17" and doc["Statement"], name
        assert f"iam/{name}" in page, name
    trust = json.loads((DOCS / "execution-role-trust.json").read_text())
    assert trust["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    caller = json.loads((DOCS / "caller-policy.json").read_text())
    (passrole,) = [s for s in caller["Statement"] if s["Action"] == "iam:PassRole"]
    assert passrole["Condition"] == {"StringEquals": {
        "iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_access_denied_names_the_missing_action():
    exc = ClientError({"Error": {"Code": "AccessDeniedException", "Message":
                                 "User: arn:aws:iam::1:user/u is not authorized to perform: "
                                 "sagemaker:CreateModel on resource: arn:aws:sagemaker:x"}},
                      "CreateModel")
    line = describe_error(exc)
    assert line.endswith("Fix: allow sagemaker:CreateModel to your credentials "
                         "(docs/iam/caller-policy.json has it with the rest; docs/iam.md)"), line
    bare = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}},
                       "PutDashboard")
    assert "docs/iam.md gives the policy" in describe_error(bare)
