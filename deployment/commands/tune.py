"""``deploy.py tune``: a Bayesian hyperparameter tuning job over lr, batch size, epochs, momentum
and weight decay, with spot instances and early stopping, and its results table."""

from __future__ import annotations

import sys

from deployment.errors import UserError
from deployment.hyperparameters import check_value, parse_hyperparameters
from deployment.output import print_table
from deployment.settings import Context, save_state, timestamp
from deployment.options import TrainingLimits
from deployment import training
from deployment.training import data_channels, make_estimator, training_instance_warning
from train.metrics import METRIC_DEFINITIONS, OBJECTIVES

NAME = "tune"
HELP = "hyperparameter tuning job"
JOB_OPTIONS = True


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("--objective", choices=sorted(OBJECTIVES), default="valid_accuracy")
    p.add_argument("--max-jobs", type=int, default=12)
    p.add_argument("--max-parallel-jobs", type=int, default=3)
    p.add_argument("--lr-range", default="1e-4,1e-1")
    p.add_argument("--batch-sizes", default="32,64,128")
    p.add_argument("--epochs-range", default="5,20")
    p.add_argument("--momentum-range", default="0.8,0.99", help="empty: not tuned")
    p.add_argument("--weight-decay-range", default="1e-6,1e-2", help="empty: not tuned")
    p.add_argument("--attach", metavar="TUNING_JOB", help="only print the jobs table of one")


def hyperparameter_ranges(args) -> dict:
    """The tuned ranges from the --*-range options (lr and weight decay on a log scale).

    Raises:
        UserError: a range that is not MIN,MAX with MIN < MAX, or not positive on a log scale.
    """
    from sagemaker.tuner import CategoricalParameter, ContinuousParameter, IntegerParameter

    lr = parse_range(args.lr_range)
    if lr[0] <= 0:
        raise UserError("--lr-range: the learning rate is searched on a log scale, MIN must be > 0")
    epochs = parse_range(args.epochs_range, int)
    sizes = [s.strip() for s in args.batch_sizes.split(",") if s.strip()]
    if not sizes or not all(s.isdigit() and int(s) > 0 for s in sizes):
        raise UserError(f"--batch-sizes {args.batch_sizes!r}: write positive integers, e.g. 32,64")
    # Every value a job of the tuner may get, checked with the job's own schema (a size or a
    # range end it refuses would fail every training job of the tuner in the container).
    for size in sizes:
        check_value(f"--batch-sizes {args.batch_sizes}", "batch-size", size)
    for option, name, ends in (("--lr-range", "lr", lr), ("--epochs-range", "epochs", epochs)):
        for end in ends:
            check_value(f"{option} {getattr(args, option[2:].replace('-', '_'))}", name, end)
    ranges = {
        "lr": ContinuousParameter(*lr, scaling_type="Logarithmic"),
        "batch-size": CategoricalParameter(sizes),
        "epochs": IntegerParameter(*epochs),
    }
    if args.momentum_range:
        momentum = parse_range(args.momentum_range)
        for end in momentum:
            check_value(f"--momentum-range {args.momentum_range}", "momentum", end)
        ranges["momentum"] = ContinuousParameter(*momentum)
    if args.weight_decay_range:
        lo, hi = parse_range(args.weight_decay_range)
        for end in (lo, hi):
            check_value(f"--weight-decay-range {args.weight_decay_range}", "weight-decay", end)
        if lo <= 0:
            raise UserError("--weight-decay-range: searched on a log scale, MIN must be > 0")
        ranges["weight-decay"] = ContinuousParameter(lo, hi, scaling_type="Logarithmic")
    return ranges


def parse_range(text: str, kind=float) -> tuple:
    """``"MIN,MAX"`` as ``(min, max)`` of ``kind``.

    Raises:
        UserError: not two numbers, or MIN not below MAX.
    """
    try:
        lo, hi = (kind(v) for v in text.split(","))
    except ValueError as exc:
        raise UserError(f"range {text!r}: write MIN,MAX, e.g. 1e-4,1e-1") from exc
    if not lo < hi:
        raise UserError(f"range {text!r}: MIN must be below MAX")
    return lo, hi


def run(ctx: Context, args) -> int:
    """Start a Bayesian tuning job (or, with --attach, print one's jobs, best first)."""
    from sagemaker.tuner import HyperparameterTuner

    if args.attach:
        return print_tuning_results(ctx.session.sagemaker_client, args.attach)
    limits = TrainingLimits.from_args(args)
    types = training.preferred_types(limits, args.spot, tuning=True)
    warning = training_instance_warning(types[0] if types else ctx.get("instance_type"))
    ranges = hyperparameter_ranges(args)
    static = parse_hyperparameters(args.hp)
    clash = set(static) & set(ranges)
    if clash:
        raise UserError(f"--hp {', '.join(sorted(clash))}: tuned, so cannot be fixed as well")
    estimator = make_estimator(ctx, limits, static)
    if warning:
        print(warning, file=sys.stderr)
    tuner = HyperparameterTuner(
        estimator,
        objective_metric_name=args.objective,
        objective_type=OBJECTIVES[args.objective],
        hyperparameter_ranges=ranges,
        metric_definitions=METRIC_DEFINITIONS,
        strategy="Bayesian",
        early_stopping_type="Auto",
        max_jobs=args.max_jobs,
        max_parallel_jobs=args.max_parallel_jobs,
    )
    name = args.job_name or f"dogs-tune-{timestamp()}"
    with training.preferring(ctx.session.sagemaker_client, types, estimator.instance_count):
        tuner.fit(data_channels(ctx, args.data, args.pretrained), job_name=name, wait=False)
    save_state(tuning_job=name)
    print(f"started tuning job {name}: {args.max_jobs} jobs, {args.max_parallel_jobs} at a time, "
          f"objective {args.objective} ({OBJECTIVES[args.objective]})")
    if not args.wait:
        print(f"see its jobs so far with: python deploy.py tune --attach {name}")
        return 0
    tuner.wait()
    return print_tuning_results(ctx.session.sagemaker_client, name)


def tuning_jobs(sm, name: str) -> list[dict]:
    """Every training job of the tuning job ``name`` (all pages)."""
    jobs, token = [], None
    while True:
        kwargs = {"HyperParameterTuningJobName": name, "MaxResults": 100}
        if token:
            kwargs["NextToken"] = token
        page = sm.list_training_jobs_for_hyper_parameter_tuning_job(**kwargs)
        jobs += page["TrainingJobSummaries"]
        token = page.get("NextToken")
        if not token:
            return jobs


def print_tuning_results(sm, name: str) -> int:
    """Print the tuning job's status and its training jobs, best objective first; 0."""
    desc = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    objective = desc["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    print(f"tuning job {name}: {desc['HyperParameterTuningJobStatus']}, objective "
          f"{objective['MetricName']} ({objective['Type']})")
    jobs = tuning_jobs(sm, name)
    reverse = objective["Type"] == "Maximize"
    missing = float("-inf") if reverse else float("inf")  # jobs without a value sort last
    scored = sorted(jobs, key=lambda j: j.get("FinalHyperParameterTuningJobObjectiveMetric",
                                              {}).get("Value", missing), reverse=reverse)
    names = sorted({k for j in jobs for k in j.get("TunedHyperParameters", {})})
    header = ["training job", "status", objective["MetricName"]] + names
    rows = []
    for j in scored:
        value = j.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
        rows.append([j["TrainingJobName"], j["TrainingJobStatus"],
                     "-" if value is None else f"{value:.4f}"]
                    + [j.get("TunedHyperParameters", {}).get(n, "") for n in names])
    print_table(header, rows)
    best = desc.get("BestTrainingJob")
    if best:
        print(f"best: {best['TrainingJobName']} {objective['MetricName']}="
              f"{best.get('FinalHyperParameterTuningJobObjectiveMetric', {}).get('Value')} "
              f"(train it with: python deploy.py train --tuning-job {name})")
    else:
        print("best: none yet")
    return 0
