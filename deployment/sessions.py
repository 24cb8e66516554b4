"""The boto3 session every AWS call of deploy.py goes through (the SageMaker session, local
mode's too), made in one place so that the tests can record every request on it."""

from __future__ import annotations

import functools


def make_boto_session(region: str | None):
    """The boto3 session every AWS call goes through (tests register botocore handlers on it)."""
    import boto3

    return boto3.Session(region_name=region)


def make_sagemaker_session(boto_session):
    """The SDK's ``sagemaker.Session`` on ``boto_session``, with its config validation made
    cheap (``validate_sdk_configs_once``)."""
    import sagemaker

    validate_sdk_configs_once()
    return sagemaker.Session(boto_session=boto_session)


@functools.cache
def _sdk_config_validator():
    import jsonschema
    from sagemaker.config.config_schema import SAGEMAKER_PYTHON_SDK_CONFIG_SCHEMA as schema

    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _validate_sagemaker_config(sagemaker_config: dict = None):
    """``sagemaker.config.validate_sagemaker_config``, with the schema itself checked once.

    Raises:
        jsonschema.ValidationError: the config breaks the SDK's schema, as the SDK's own raises.
    """
    import jsonschema

    error = jsonschema.exceptions.best_match(_sdk_config_validator().iter_errors(sagemaker_config))
    if error is not None:
        raise error


@functools.cache
def validate_sdk_configs_once() -> None:
    """Makes the SageMaker SDK 2.x check its config schema once per process, not per look-up.

    Where a config file exists (the user's defaults, or the TelemetryOptOut that local mode
    sets), the SDK calls ``jsonschema.validate`` on every config look-up, and that checks the
    SDK's whole schema against JSON Schema's metaschema each time, hundreds of times in one
    deploy. The config itself is still validated at every look-up, with the same
    errors (``jsonschema.validate`` is ``check_schema`` plus ``best_match(iter_errors)``).
    """
    import sagemaker.config
    import sagemaker.config.config
    import sagemaker.session
    import sagemaker.utils

    for module in (sagemaker.config, sagemaker.config.config, sagemaker.session, sagemaker.utils):
        if hasattr(module, "validate_sagemaker_config"):
            module.validate_sagemaker_config = _validate_sagemaker_config
