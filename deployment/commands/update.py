"""``deploy.py update``: a new model version onto an existing endpoint, keeping its shape, with
SageMaker's deployment guardrails (all-at-once, canary, linear or rolling, rolled back on the
endpoint's alarms); deployment/updates.py does the work."""

from __future__ import annotations

from deployment import guardrails, models, versions
from deployment.settings import Context
from deployment.options import UpdateOptions
from deployment.updates import update_model

NAME = "update"
HELP = ("a new model version behind an endpoint: canary, linear or rolling, rolled back on "
        "its alarms")
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options: the model and what may change (else the endpoint's own values are
    kept), the strategy, and --no-wait."""
    models.add_model_arguments(p)
    guardrails.add_strategy_arguments(p)
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="start the update and return, without following it (nothing pruned)")
    p.epilog = (f"Keeps {versions.KEEP} versions: the one serving and the one before it "
                "(python deploy.py rollback's target); older ones are deleted. Exit 0 when the "
                "new version serves, 2 when SageMaker rolled it back, 3 when it is still "
                "updating past the deployment's time limit, 1 for any other error.")


def run(ctx: Context, args) -> int:
    """Update the endpoint's model; the same update twice changes nothing."""
    return update_model(ctx, UpdateOptions.from_args(args))
