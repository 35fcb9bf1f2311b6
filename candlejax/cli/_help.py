"""The command line's help formatter: each flag's default, said once."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["HelpFormatter", "add_cpu_argument", "use_cpu_if_asked"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``argparse.ArgumentDefaultsHelpFormatter`` that leaves out ``(default: ...)`` where the help
    already says what the default is, and for required options and positionals (which have none)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.required or not action.option_strings:
            return text
        return super()._get_help_string(action)


def add_cpu_argument(p: argparse.ArgumentParser, default: Any = False) -> None:
    """Candle's examples' ``--cpu`` flag; read it with :func:`use_cpu_if_asked` (``default``:
    ``argparse.SUPPRESS`` on a sub-command, so that it keeps a ``--cpu`` given before the sub-command)."""
    p.add_argument("--cpu", action="store_true", default=default,
                   help="run on the CPU even when JAX sees a GPU (Candle's --cpu)")  # fmt: skip


def use_cpu_if_asked(args: argparse.Namespace) -> None:
    """With ``--cpu``: JAX uses only its CPU backend (no GPU is initialised when none was yet), and
    arrays are placed on the CPU by default."""
    if not getattr(args, "cpu", False):
        return
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_default_device", jax.devices("cpu")[0])
