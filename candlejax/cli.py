"""The ``candlejax`` console script.

    candlejax embed --model DIR "a sentence" ...          # = python -m candlejax.models.bert embed
    candlejax generate --gguf FILE --prompt "..." -n 128   # = python -m candlejax.models.llama generate
    candlejax demo                                          # = python -m candlejax.demo
"""

from __future__ import annotations

import importlib
import sys

_COMMANDS = {
    "embed": ("candlejax.models.bert", ["embed"]),
    "generate": ("candlejax.models.llama", ["generate"]),
    "demo": ("candlejax.demo", []),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _COMMANDS:
        print(__doc__.strip())
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module, prefix = _COMMANDS[argv[0]]
    entry = importlib.import_module(module)
    return int(entry.main(prefix + argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
