"""The workstation side of deploy.py: settings, one module per AWS service it talks to, and one
module per verb.

``deploy.py`` at the repository's root stays the program users run; ``deployment.cli.main``
does the work. The verbs (deployment/commands/) share what they need through the modules here,
never through each other:

- ``settings``: settings, remembered names and the ``Context`` (sessions made on first use);
- ``errors``: ``UserError`` and AWS errors as one line with the fix; ``output``: tables;
- ``sessions`` (boto3), ``ecr``, ``training`` (SageMaker training and tuning jobs),
  ``endpoints`` (SageMaker endpoints and the Predictor), ``autoscaling`` (Application Auto
  Scaling), ``cloudwatch`` (alarms and the dashboard; ``monitoring`` says what they show);
- ``hyperparameters``: ``--hp`` checked against the training job's own schema.

Nothing here goes into the image.
"""
