"""Old option names kept working after a rename: each stores into the new option's destination
and says on stderr which name to use, so a user's scripts keep running while they move."""

from __future__ import annotations

import argparse
import sys


class Deprecated(argparse.Action):
    """An option that is another's old name: ``p.add_argument("--output", dest="output_path",
    action=Deprecated, new="--output-path")``."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        kwargs.setdefault("help", f"deprecated: the old name of {new}")
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def renamed(p, new: str, old: str, **kwargs) -> None:
    """Add option ``new`` (its ``kwargs`` as ``add_argument``'s) and ``old`` as its deprecated
    alias."""
    action = p.add_argument(new, **kwargs)
    p.add_argument(old, dest=action.dest, action=Deprecated, new=new, default=argparse.SUPPRESS,
                   metavar=action.metavar, type=action.type)
