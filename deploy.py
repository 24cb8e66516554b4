#!/usr/bin/env python3
"""deploy.py: the workstation side of the dog-breed classifier on Amazon SageMaker.

Drives AWS through the SageMaker Python SDK 2.x (generic ``Estimator`` with ``image_uri``,
``HyperparameterTuner``, ``Model``, ``Predictor``)::

    python deploy.py data      # fetch dogImages, upload train/valid/test to S3, print the URIs
    python deploy.py tune      # Bayesian tuning of lr, batch-size, epochs, momentum, weight-decay
    python deploy.py train     # one job: the best tuning job's hyperparameters, or given ones
    python deploy.py deploy    # a real-time, serverless or asynchronous endpoint
    python deploy.py predict PHOTO_OR_URL...   # top-k breeds per photo
    python deploy.py delete    # endpoint, endpoint config and model; safe to repeat
    python deploy.py report JOB   # a training job's debugger report
    python deploy.py local     # train and deploy with the SDK's local mode on a Docker engine

Each verb is a module of deployment/commands; settings come from the command line, then
``DEPLOY_*`` variables, then ``deploy.toml`` (deployment/settings.py). Every user error ends in
one line on stderr saying what is wrong and how to fix it, exit 1.
"""

import sys

from deployment.cli import main

if __name__ == "__main__":
    sys.exit(main())
