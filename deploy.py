#!/usr/bin/env python3
"""deploy.py: the workstation side of the dog-breed classifier on Amazon SageMaker.

Drives AWS through the SageMaker Python SDK 2.x (generic ``Estimator`` with ``image_uri``,
``HyperparameterTuner``, ``Model``, ``Predictor``). ``python deploy.py --help`` lists the verbs,
from the command table (deployment/commands/__init__.py).

Each verb is a module of deployment/commands; settings come from the command line, then
``DEPLOY_*`` variables, then ``deploy.toml`` (deployment/settings.py). Every user error ends in
one line on stderr saying what is wrong and how to fix it, exit 1.
"""

import sys

from deployment.cli import main

if __name__ == "__main__":
    sys.exit(main())
