"""The workstation side of deploy.py: settings, AWS helpers and one module per verb.

``deploy.py`` at the repository's root stays the program users run; ``deployment.cli.main``
does the work. Nothing here goes into the image.
"""
