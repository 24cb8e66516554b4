"""The SageMaker session deploy.py makes: the SDK's config still validated at every look-up,
with the SDK's own errors, but its schema checked once per process."""

from __future__ import annotations

import boto3
import jsonschema
import pytest
from sagemaker.config.config_schema import SAGEMAKER_PYTHON_SDK_CONFIG_SCHEMA as SCHEMA

from deployment import sessions

GOOD = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
BAD = [{"SchemaVersion": "2.0"},
       {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": 1}}}},
       {"SchemaVersion": "1.0", "Unknown": {}}]


def test_every_config_is_still_validated_with_the_errors_jsonschema_gives():
    import sagemaker.config
    import sagemaker.session
    import sagemaker.utils

    sessions.validate_sdk_configs_once()
    for module in (sagemaker.config, sagemaker.session, sagemaker.utils):
        module.validate_sagemaker_config(GOOD)
        for bad in BAD:
            with pytest.raises(jsonschema.ValidationError) as ours:
                module.validate_sagemaker_config(bad)
            with pytest.raises(jsonschema.ValidationError) as theirs:
                jsonschema.validate(bad, SCHEMA)
            assert ours.value.message == theirs.value.message


def test_sessions_and_look_ups_check_the_sdks_schema_once(monkeypatch):
    import sagemaker.config

    checked = []
    cls = jsonschema.validators.validator_for(SCHEMA)
    monkeypatch.setattr(cls, "check_schema", classmethod(lambda c, schema: checked.append(1)))
    sessions._sdk_config_validator.cache_clear()
    try:
        for _ in range(2):
            sessions.make_sagemaker_session(boto3.Session(region_name="eu-west-1"))
            for _ in range(5):
                sagemaker.config.validate_sagemaker_config(GOOD)
    finally:
        sessions._sdk_config_validator.cache_clear()  # the next user checks the real schema
    assert checked == [1]
