"""``deploy.py train``: one training job, from given hyperparameters or a tuning job's best."""

from __future__ import annotations

import sys

from deployment import training
from deployment.hyperparameters import parse_hyperparameters
from deployment.settings import Context, save_state, timestamp
from deployment.options import TrainingLimits
from deployment.training import data_channels, make_estimator, training_instance_warning

NAME = "train"
HELP = "one training job"
JOB_OPTIONS = True
LOG_POLL_S = 10  # between --attach's reads of the job's log and status (the SDK's default)


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("--tuning-job", help="start from the best hyperparameters of this job")
    p.add_argument("--attach", metavar="TRAINING_JOB",
                   help="follow a job already started (train --no-wait, or one an interrupt left "
                        "running): its log until it ends, then its model")
    p.add_argument("--debugger-service", action="store_true",
                   help="SageMaker Debugger hook, built-in rules and profiler (accounts that "
                        "still have the service)")


def attach(ctx: Context, name: str) -> int:
    """Follow training job ``name``: its CloudWatch log until it ends (the SDK's
    ``logs_for_job``), then its model, or its failure reason (exit 1)."""
    sm = ctx.session.sagemaker_client
    ctx.session.logs_for_job(name, wait=True, poll=LOG_POLL_S)
    desc = sm.describe_training_job(TrainingJobName=name)
    save_state(training_job=name)
    if desc["TrainingJobStatus"] != "Completed":
        print(f"training job {name} ended {desc['TrainingJobStatus']}: "
              f"{desc.get('FailureReason', 'no reason given')}", file=sys.stderr)
        return 1
    print(f"model: {desc['ModelArtifacts']['S3ModelArtifacts']}")
    print(f"deploy it with: python deploy.py deploy --training-job {name}")
    return 0


def run(ctx: Context, args) -> int:
    """Start one training job (managed spot with checkpoints unless --no-spot), or with
    --attach follow one."""
    if args.attach:
        return attach(ctx, args.attach)
    limits = TrainingLimits.from_args(args)
    types = training.preferred_types(limits, args.spot)
    warning = training_instance_warning(types[0] if types else ctx.get("instance_type"))
    hyperparameters = {}
    tuning_job = args.tuning_job
    if tuning_job:
        best, hyperparameters = training.best_hyperparameters(ctx.session.sagemaker_client,
                                                              tuning_job)
        print(f"hyperparameters of {best}, the best job of {tuning_job}: "
              + " ".join(f"{k}={v}" for k, v in sorted(hyperparameters.items())))
    hyperparameters.update(parse_hyperparameters(args.hp))
    name = args.job_name or f"dog-breeds-{timestamp()}"
    checkpoints = f"{ctx.s3_prefix()}/checkpoints/{name}" if args.spot else None
    estimator = make_estimator(ctx, limits, hyperparameters, checkpoints=checkpoints)
    if warning:
        print(warning, file=sys.stderr)
    try:
        with training.preferring(ctx.session.sagemaker_client, types, estimator.instance_count):
            estimator.fit(data_channels(ctx, args.data, args.pretrained), job_name=name,
                          wait=args.wait, logs="All" if args.wait else "None")
    except KeyboardInterrupt:
        save_state(training_job=name)
        print(f"interrupted: training job {name}, once started, keeps running in AWS; follow it "
              f"with python deploy.py train --attach {name}, or stop it with aws sagemaker "
              f"stop-training-job --training-job-name {name}", file=sys.stderr)
        return 130
    save_state(training_job=name)
    print(f"started training job {name}" + (" (managed spot, checkpoints in "
                                              f"{checkpoints})" if args.spot else ""))
    if not args.wait:
        print(f"follow it with: python deploy.py train --attach {name}")
    if types and args.wait:
        chosen = ctx.session.sagemaker_client.describe_training_job(TrainingJobName=name)[
            "ResourceConfig"].get("SelectedInstanceType")
        print(f"SageMaker ran {name} on {chosen or 'a type it did not name'}, of "
              f"{', '.join(types)}")
    elif types:
        print(f"SageMaker runs {name} on the first of {', '.join(types)} with capacity "
              "(ResourceConfig.SelectedInstanceType in its description says which)")
    if args.wait:
        print(f"model: {estimator.model_data}")
        print(f"deploy it with: python deploy.py deploy --training-job {name}")
    else:
        print(f"deploy it when done with: python deploy.py deploy --training-job {name}")
    return 0
