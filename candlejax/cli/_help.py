"""The command line's help formatter: each flag's default, said once."""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``argparse.ArgumentDefaultsHelpFormatter`` that leaves out ``(default: ...)`` where the help
    already says what the default is, and for required options and positionals (which have none)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.required or not action.option_strings:
            return text
        return super()._get_help_string(action)
