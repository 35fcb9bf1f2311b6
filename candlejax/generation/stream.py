"""Streaming text out of a token stream (Candle: ``candle_examples::token_output_stream``).

requires: a tokenizer with ``decode(ids, skip_special_tokens=...)`` (HF ``tokenizers.Tokenizer``
or :class:`candlejax.tokenizer.Tokenizer`)
provides: ``TokenOutputStream``
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.tensor._core import int_arg


def _token_id(token: Any, op: str, what: str) -> int:
    """A token id (an int in u32's range), or a candlejax error naming ``op``."""
    token = int_arg(token, op, what)
    if not 0 <= token < 2**32:
        raise errors.InvalidArgument(f"{op}: {what.replace('token', 'token id')} {token} is out of range (u32)")
    return token


class _TokenizerHandle:
    """``TokenOutputStream.tokenizer``: calling it gives the tokenizer (Candle's ``tokenizer()``);
    attributes are the tokenizer's."""

    __slots__ = ("_tok",)

    def __init__(self, tok: Any) -> None:
        object.__setattr__(self, "_tok", tok)

    def __call__(self) -> Any:
        return self._tok

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._tok, name, value)

    def __repr__(self) -> str:
        return repr(self._tok)


class TokenOutputStream:
    """Decode tokens one at a time and hand out only complete new text.

    A byte-level BPE token may hold half a UTF-8 character, and SentencePiece decoders drop a
    leading space of the first token; decoding each token alone gets both wrong. This decodes a
    short window of recent tokens and yields the text beyond what that window already produced
    (text-generation-inference's method, as Candle's examples do). Text that ends in an
    incomplete character (U+FFFD) is held back until the next token completes it.

    Sketch (needs a tokenizer and a model)::

        stream = TokenOutputStream(tokenizer)
        for tok in generate(...):
            if (text := stream.next_token(tok)) is not None:
                print(text, end="", flush=True)
        print(stream.decode_rest() or "")
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True, context: Sequence[int] = ()) -> None:
        """``context``: ids already shown before the stream (the prompt); its last id (and the
        special ids before it back to one with text) is decoded with the first new ones, so that
        their text continues it. A SentencePiece decoder strips
        the leading space of a text's first token: without a context, ``"▁time"`` after the prompt
        ``"Once upon a"`` comes out as ``"time"`` (Candle's stream does so); with it, ``" time"``,
        as ``tokenizer.decode(prompt + new)`` and transformers' ``TextStreamer`` give."""
        if not callable(getattr(tokenizer, "decode", None)):
            raise errors.ArgumentType(
                f"TokenOutputStream: expected a tokenizer (with decode), got {type(tokenizer).__name__}"
            )
        if not isinstance(skip_special_tokens, (bool, np.bool_)):
            raise errors.ArgumentType(
                f"TokenOutputStream: skip_special_tokens must be a bool, got {skip_special_tokens!r:.40}"
                f" ({type(skip_special_tokens).__name__})"
            )
        self._tokenizer = tokenizer
        self.skip_special_tokens = bool(skip_special_tokens)
        ctx = [_token_id(t, "TokenOutputStream", "context token") for t in context]
        # the context's last id, and the skipped (special) ids before it back to one with text: a
        # window that starts at a skipped id would have its first new word's space stripped
        n = min(len(ctx), 1)
        while n < min(len(ctx), 16) and not self._decode([ctx[-n]]):
            n += 1
        self._n_context = n
        self.tokens: list[int] = ctx[len(ctx) - n :]
        self.prev_index = 0
        self.current_index = len(self.tokens)

    @staticmethod
    def new(tokenizer: Any) -> TokenOutputStream:
        """Candle's ``TokenOutputStream::new(tokenizer)``."""
        return TokenOutputStream(tokenizer)

    @property
    def tokenizer(self) -> Any:
        """The wrapped tokenizer. Candle's method form ``tos.tokenizer().encode(...)`` works as
        written, and so does the attribute form ``tos.tokenizer.encode(...)``."""
        return _TokenizerHandle(self._tokenizer)

    def into_inner(self) -> Any:
        """The wrapped tokenizer (Candle: ``into_inner``)."""
        return self._tokenizer

    def _decode(self, tokens: list[int]) -> str:
        return self._tokenizer.decode(tokens, skip_special_tokens=self.skip_special_tokens)

    def next_token(self, token: int) -> str | None:
        """Add ``token``; return the new complete text, or ``None`` if there is none yet."""
        prev_text = self._decode(self.tokens[self.prev_index : self.current_index]) if self.tokens else ""
        self.tokens.append(_token_id(token, "TokenOutputStream.next_token", "token"))
        text = self._decode(self.tokens[self.prev_index :])
        if len(text) > len(prev_text) and not text.endswith("\ufffd"):
            self.prev_index = self.current_index
            self.current_index = len(self.tokens)
            return text[len(prev_text) :]
        return None

    def decode_rest(self) -> str | None:
        """The text not yet handed out (call once the stream ends), or ``None``."""
        prev_text = self._decode(self.tokens[self.prev_index : self.current_index]) if self.tokens else ""
        text = self._decode(self.tokens[self.prev_index :])
        if len(text) > len(prev_text):
            return text[len(prev_text) :]
        return None

    def decode_all(self) -> str:
        """All tokens so far (not the ``context``), decoded at once."""
        return self._decode(self.tokens[self._n_context :])

    def get_token(self, token_s: str) -> int | None:
        """The id of a token string, e.g. ``"</s>"``, or ``None`` (Candle: ``get_token``, a look-up in
        ``get_vocab(true)``; transformers' tokenizers have ``get_vocab`` but no ``token_to_id``)."""
        tok = self._tokenizer
        fn = getattr(tok, "token_to_id", None)
        if fn is not None:
            return fn(token_s)
        vocab = getattr(tok, "get_vocab", None)
        return vocab().get(token_s) if vocab is not None else None

    def clear(self) -> None:
        """Forget the tokens seen so far."""
        self.tokens.clear()
        self._n_context = 0
        self.prev_index = 0
        self.current_index = 0

    def stream(self, tokens: Iterable[int], flush: bool = True) -> Iterator[str]:
        """Yield text pieces for an iterable of tokens (and the rest at the end if ``flush``)."""
        for t in tokens:
            piece = self.next_token(t)
            if piece is not None:
                yield piece
        if flush:
            rest = self.decode_rest()
            if rest:
                yield rest
