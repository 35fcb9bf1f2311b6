"""``candlejax chat``: an interactive chat; each turn continues the KV cache of the previous ones."""

from __future__ import annotations

import argparse
import sys

from candlejax import errors
from candlejax.cli.generate import Timer, add_model_arguments, compile_then_load, gguf_as_model, load


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--system", default=None, help="system message")


def run(args: argparse.Namespace) -> int:
    from candlejax.pipelines import processor_from

    gguf_as_model(args)
    # a GGUF file: the turns' programs are compiled before the weights are loaded (as `generate`
    # does); prompts run in padded chunks, so any prompt's programs serve every turn
    abstract = bool(args.gguf)
    tg = load(args, args.max_seq_len or 2048, abstract=abstract)
    lp = processor_from(args.seed, args.temperature, args.top_k, args.top_p)
    warm = tg.encode("Hello", chat=True, system=args.system)  # the chat template's preamble and a one-word message
    if len(warm) >= tg.max_seq_len:
        raise errors.InvalidArgument(
            f"--max-seq-len {tg.max_seq_len} is too small for a chat: the chat template's preamble and a one-word"
            f" message take {len(warm)} tokens; raise it (default 2048)"
        )
    if abstract:
        compile_then_load(tg, args, warm, lp)
    interactive = sys.stdin.isatty()
    print(f"chat with {args.gguf or args.model} ({tg.max_seq_len} positions); /reset clears, Ctrl-D quits",
          file=sys.stderr)  # fmt: skip
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return 0
        msg = line.strip()
        if not msg:
            continue
        if msg == "/reset":
            tg.reset()
            continue
        timer = Timer()
        try:
            for piece in tg.chat_turn(msg, args.n, lp, system=args.system, repeat_penalty=args.repeat_penalty,
                                      repeat_last_n=args.repeat_last_n):  # fmt: skip
                timer.tick()
                sys.stdout.write(piece)
                sys.stdout.flush()
        except errors.Error as e:  # a message that does not fit the cache: the session stays open
            print(f"candlejax chat: error: {e} (/reset to start over)", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        if tg.generation.finish_reason == "cache_full":
            print("(the KV cache is full: /reset to start over, or raise --max-seq-len)", file=sys.stderr)
