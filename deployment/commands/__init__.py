"""deploy.py's verbs, one module each (as pip's commands): ``NAME``, ``HELP``, ``JOB_OPTIONS``
(whether the training-job options apply), ``add_arguments(parser)`` and ``run(ctx, args)``."""

from deployment.commands import (compile, data, delete, deploy, local, monitor, predict, report,
                                 rollback, train, transform, tune, update)

COMMANDS = (data, tune, train, compile, deploy, update, rollback, predict, transform, monitor,
            delete, report, local)
