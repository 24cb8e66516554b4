"""``deploy.py report``: a training job's debugger report, from its output.tar.gz to the terminal."""

from __future__ import annotations

import json
from pathlib import Path

from deployment.aliases import renamed
from deployment.errors import UserError
from deployment.output import print_table
from deployment.settings import Context

NAME = "report"
HELP = "download a training job's debugger report and print its rules"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("training_job", help="training job name")
    renamed(p, "--output-dir", "--output", default="out/reports", help="where the report is unpacked")
    p.add_argument("--open", action="store_true", help="open report.html in a browser")


def run(ctx: Context, args) -> int:
    """Download a training job's output.tar.gz, print the rule table of the debugger report the
    container wrote (output/data/report/, train/debugger/report.py) and say where report.html is."""
    import tarfile

    from botocore.exceptions import ClientError

    name = args.training_job
    job = ctx.session.sagemaker_client.describe_training_job(TrainingJobName=name)
    output = job.get("OutputDataConfig", {}).get("S3OutputPath", "").rstrip("/")
    uri = f"{output}/{name}/output/output.tar.gz"
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    dest = Path(args.output_dir) / name
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "output.tar.gz"
    try:
        ctx.boto.client("s3").download_file(bucket, key, str(archive))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            raise UserError(f"{uri} does not exist: job {name} is {job['TrainingJobStatus']} "
                            f"and has written no output yet") from None
        raise
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    summary_path = dest / "report" / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"job {name} wrote no report/ (trained with debugger-rules=false, or "
                        f"by an older image)")
    summary = json.loads(summary_path.read_text())
    rows = [[r["name"], r["status"], "" if r["step"] is None else str(r["step"]), r["detail"]]
            for r in summary["rules"]]
    print(f"training job {name} ({job['TrainingJobStatus']}): "
          f"{len(summary['triggered'])} of {len(rows)} rules triggered")
    print_table(["rule", "status", "step", "detail"], rows)
    html = (dest / "report" / "report.html").resolve()
    print(f"report: {html.as_uri()}")
    if args.open:
        import webbrowser

        webbrowser.open(html.as_uri())
    return 0
