"""``--hp NAME=VALUE`` options, checked against the training job's own schema
(train/hyperparameters.py) before any AWS call: a bad name or value is one line, not a failed
job minutes later."""

from __future__ import annotations

from deployment.errors import UserError
from train import hyperparameters as schema


def parse_hyperparameters(pairs: list[str]) -> dict[str, str]:
    """``["lr=0.01", "epochs=3"]`` to a dict of strings, each name and value checked.

    Raises:
        UserError: not NAME=VALUE, an unknown name, or a value the job would refuse (naming
            the key and the accepted values).
    """
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not value:
            raise UserError(f"--hp {pair!r}: write NAME=VALUE, e.g. --hp lr=0.01")
        check_value(f"--hp {pair}", name, value)
        out[name] = value
    return out


def check_value(option: str, name: str, value) -> None:
    """A value an option sends the job for hyperparameter ``name`` (a tuning range's end, a
    categorical choice), checked with the job's own schema.

    Raises:
        UserError: the job would refuse it (``option`` and the accepted values named).
    """
    try:
        schema.validate({name: str(value)})
    except schema.HyperparameterError as exc:
        raise UserError(f"{option}: {exc}") from None
