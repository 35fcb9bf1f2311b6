"""``candle_examples::chat_template``: Jinja chat templates, rendered as ``transformers``'
``apply_chat_template`` renders them (:class:`candlejax.tokenizer.ChatTemplate`).

requires: jinja2, candlejax.tokenizer, candlejax.errors
provides: ``Message``, ``ChatTemplateOptions``, ``ChatTemplate``, ``Conversation``,
``ChatTemplateError`` (``IoError``, ``ParseError``, ``TemplateError``, ``RenderError``, ``NoTemplate``)

::

    template = ChatTemplate.from_tokenizer_config("tokenizer_config.json")   # or ChatTemplate.chatml()
    prompt = template.apply_for_generation([Message.system("Be brief."), Message.user("Hi!")])
    conv = Conversation.new(ChatTemplate.chatml(), "You are helpful.")
    prompt = conv.user_turn("Hello!"); conv.assistant_response("Hi there!")

Candle renders with minijinja's defaults; this uses transformers' settings (``trim_blocks``,
``lstrip_blocks``), which agree on the presets (all whitespace-controlled) and make templates read
from ``tokenizer_config.json`` render exactly as in Python. ``ChatTemplateOptions.extra_context``
reaches the template (Candle declares the field but does not pass it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from candlejax import errors
from candlejax.tokenizer import ChatTemplate as _Jinja

__all__ = [
    "ChatTemplate", "ChatTemplateError", "ChatTemplateOptions", "Conversation", "IoError", "Message", "NoTemplate",
    "ParseError", "RenderError", "TemplateError",
]  # fmt: skip


class ChatTemplateError(errors.Error):
    """Candle's ``ChatTemplateError``; its variants are the subclasses below (also reachable as
    ``ChatTemplateError.NoTemplate`` etc.)."""

    # the variants, set below their definitions; declared here for type checkers
    IoError: ClassVar[type[IoError]]
    ParseError: ClassVar[type[ParseError]]
    TemplateError: ClassVar[type[TemplateError]]
    RenderError: ClassVar[type[RenderError]]
    NoTemplate: ClassVar[type[NoTemplate]]


class IoError(ChatTemplateError):
    """The tokenizer config file cannot be read."""


class _IoNoSuchFile(errors.NoSuchFile, IoError):
    """A missing tokenizer config: an ``IoError`` and a ``NoSuchFile`` (``FileNotFoundError``)."""


class _IoIsADirectory(errors.IsADirectory, IoError):
    """A folder given as the tokenizer config: an ``IoError`` and an ``IsADirectory``."""


class ParseError(ChatTemplateError):
    """The tokenizer config is not valid JSON (or not an object)."""


class TemplateError(ChatTemplateError):
    """The template does not compile (Jinja syntax)."""


class RenderError(ChatTemplateError):
    """Rendering failed, including a template's own ``raise_exception(...)``."""


class NoTemplate(ChatTemplateError):
    """The tokenizer config has no ``chat_template``."""

    def __init__(self, msg: str = "No chat_template found in config") -> None:
        super().__init__(msg)


ChatTemplateError.IoError = IoError
ChatTemplateError.ParseError = ParseError
ChatTemplateError.TemplateError = TemplateError
ChatTemplateError.RenderError = RenderError
ChatTemplateError.NoTemplate = NoTemplate


@dataclasses.dataclass
class Message:
    """One chat message; templates see it as ``{"role": ..., "content": ...}``."""

    role: str
    content: str

    @staticmethod
    def new(role: str, content: str) -> Message:
        """A message with ``role`` and ``content``."""
        return Message(role, content)

    @staticmethod
    def system(content: str) -> Message:
        """A ``"system"`` message."""
        return Message("system", content)

    @staticmethod
    def user(content: str) -> Message:
        """A ``"user"`` message."""
        return Message("user", content)

    @staticmethod
    def assistant(content: str) -> Message:
        """candle-examples' ``Message::assistant``: an ``"assistant"`` message."""
        return Message("assistant", content)


@dataclasses.dataclass
class ChatTemplateOptions:
    """How to render: ``add_generation_prompt`` (open an assistant turn), ``continue_final_message``
    (prefill: leave the last message open), ``enable_thinking``, and ``extra_context`` (more
    template variables)."""

    add_generation_prompt: bool = False
    continue_final_message: bool = False
    enable_thinking: bool = False
    extra_context: dict[str, Any] = dataclasses.field(default_factory=dict)

    @staticmethod
    def for_generation() -> ChatTemplateOptions:
        """candle-examples' ``ChatTemplateOptions::for_generation``: add the generation prompt."""
        return ChatTemplateOptions(add_generation_prompt=True)

    @staticmethod
    def for_training() -> ChatTemplateOptions:
        """candle-examples' ``ChatTemplateOptions::for_training``: no generation prompt."""
        return ChatTemplateOptions(add_generation_prompt=False)

    def with_thinking(self) -> ChatTemplateOptions:
        """A copy with ``enable_thinking`` set."""
        return dataclasses.replace(self, enable_thinking=True, extra_context=dict(self.extra_context))


def _token(v: Any) -> str:
    """A special token from tokenizer_config.json: a string or ``{"content": ...}``."""
    if isinstance(v, Mapping):
        v = v.get("content")
    return v if isinstance(v, str) else ""


_CHATML = (
    "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + (m['content'] | trim) + '<|im_end|>\\n' }}"
    "{%- endfor %}"
)
_CHATML_OPEN = "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
_CHATML_THINK_OPEN = (
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking %}{{- '<think>\\n' }}{%- endif %}{%- endif %}"
)
_LLAMA2 = """
{%- if messages[0]['role'] == 'system' -%}
  {%- set sys = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' -%}
  {%- set turns = messages[1:] -%}
{%- else -%}
  {%- set sys = '' -%}
  {%- set turns = messages -%}
{%- endif -%}
{%- for m in turns -%}
  {%- if (m['role'] == 'user') != (loop.index0 is even) -%}
    {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}
  {%- endif -%}
  {%- if loop.first -%}{{- bos_token + '[INST] ' + sys + m['content'] + ' [/INST]' -}}
  {%- elif m['role'] == 'user' -%}{{- bos_token + '[INST] ' + m['content'] + ' [/INST]' -}}
  {%- elif m['role'] == 'assistant' -%}{{- ' ' + m['content'] + ' ' + eos_token -}}
  {%- endif -%}
{%- endfor -%}
"""
_LLAMA3 = """
{%- for m in messages -%}
  {%- if loop.first -%}{{- bos_token -}}{%- endif -%}
  {{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + (m['content'] | trim) + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}
"""
_MISTRAL = """
{{- bos_token -}}
{%- for m in messages -%}
  {%- if m['role'] == 'user' -%}{{- '[INST] ' + m['content'] + ' [/INST]' -}}
  {%- elif m['role'] == 'assistant' -%}{{- ' ' + m['content'] + eos_token -}}
  {%- endif -%}
{%- endfor -%}
"""
_GEMMA = """
{%- for m in messages -%}
  {%- if m['role'] == 'user' -%}{{- '<start_of_turn>user\\n' + m['content'] + '<end_of_turn>\\n' -}}
  {%- elif m['role'] == 'assistant' -%}{{- '<start_of_turn>model\\n' + m['content'] + '<end_of_turn>\\n' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}
"""


_RESERVED = ("messages", "add_generation_prompt", "continue_final_message", "enable_thinking")


class ChatTemplate:
    """A compiled chat template with its ``bos_token`` and ``eos_token`` (template variables)."""

    def __init__(self, template: str, bos_token: str = "", eos_token: str = "") -> None:
        import jinja2

        try:
            self._jinja = _Jinja(template, {"bos_token": bos_token, "eos_token": eos_token})
        except jinja2.TemplateError as e:  # (candlejax's error names the template; Candle's wording is jinja's)
            raise TemplateError(f"Template error: {e.__cause__ or e}") from None
        self.bos_token, self.eos_token = bos_token, eos_token

    @property
    def source(self) -> str:
        """The Jinja source."""
        return self._jinja.source

    @staticmethod
    def new(template: str, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
        """A template from its Jinja source and the BOS / EOS tokens it may use."""
        return ChatTemplate(template, bos_token, eos_token)

    @staticmethod
    def from_tokenizer_config(path: str | os.PathLike[str]) -> ChatTemplate:
        """The ``chat_template`` (and ``bos_token`` / ``eos_token``) of a ``tokenizer_config.json``."""
        p = errors.path_arg(path, "ChatTemplate.from_tokenizer_config")
        try:
            with open(p, encoding="utf-8") as f:
                content = f.read()
        except (OSError, UnicodeDecodeError) as e:
            msg = f"IO error: cannot read {p!r}: {e}"
            if isinstance(e, FileNotFoundError | IsADirectoryError):
                cls = _IoNoSuchFile if isinstance(e, FileNotFoundError) else _IoIsADirectory
                raise cls("ChatTemplate.from_tokenizer_config", p, message=msg) from None
            raise IoError(msg) from None
        try:
            return ChatTemplate.from_tokenizer_config_str(content)
        except NoTemplate:
            raise NoTemplate(f"No chat_template found in config {p!r}") from None
        except ChatTemplateError as e:
            raise type(e)(f"{e} (in {p!r})") from None

    @staticmethod
    def from_tokenizer_config_str(json_str: str) -> ChatTemplate:
        """As :meth:`from_tokenizer_config`, from the file's text. A list of named templates gives
        the one named ``"default"``, else the first."""
        try:
            config = json.loads(json_str)
        except ValueError as e:
            raise ParseError(f"Parse error: {e}") from None
        if not isinstance(config, dict):
            raise ParseError(f"Parse error: expected a JSON object, got {type(config).__name__}")
        template = config.get("chat_template")
        if isinstance(template, list):
            named = [t for t in template if isinstance(t, Mapping) and isinstance(t.get("template"), str)]
            chosen = next((t for t in named if t.get("name") == "default"), named[0] if named else None)
            template = chosen["template"] if chosen else None
        if not isinstance(template, str):
            raise NoTemplate()
        return ChatTemplate(template, _token(config.get("bos_token")), _token(config.get("eos_token")))

    @staticmethod
    def chatml() -> ChatTemplate:
        """ChatML (SmolLM, Qwen, ...): ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message.

        >>> ChatTemplate.chatml().apply_for_generation([Message.user("Hi")])
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        return ChatTemplate(_CHATML + _CHATML_OPEN, "", "<|im_end|>")

    @staticmethod
    def chatml_with_thinking() -> ChatTemplate:
        """ChatML whose generation prompt opens ``<think>`` when ``enable_thinking``."""
        return ChatTemplate(_CHATML + _CHATML_THINK_OPEN, "", "<|im_end|>")

    @staticmethod
    def llama2() -> ChatTemplate:
        """Llama 2 chat: ``<s>[INST] <<SYS>>...<</SYS>>\\n\\nuser [/INST] assistant </s>``; roles must alternate."""
        return ChatTemplate(_LLAMA2, "<s>", "</s>")

    @staticmethod
    def llama3() -> ChatTemplate:
        """Llama 3 / 3.1: header-delimited turns ending in ``<|eot_id|>``."""
        return ChatTemplate(_LLAMA3, "<|begin_of_text|>", "<|eot_id|>")

    @staticmethod
    def mistral() -> ChatTemplate:
        """Mistral Instruct: ``<s>[INST] user [/INST] assistant</s>`` (system messages are dropped)."""
        return ChatTemplate(_MISTRAL, "<s>", "</s>")

    @staticmethod
    def gemma() -> ChatTemplate:
        """Gemma: ``<start_of_turn>user|model`` turns (system messages are dropped)."""
        return ChatTemplate(_GEMMA, "<bos>", "<eos>")

    def apply(self, messages: Sequence[Message | Mapping[str, Any]], options: ChatTemplateOptions | None = None) -> str:
        """The prompt text for ``messages``, leading whitespace removed (as Candle does).

        Raises :class:`RenderError` when ``options.extra_context`` sets ``messages`` or one of the
        variables the options' own fields set (``add_generation_prompt``, ...)."""
        import jinja2

        o = options if options is not None else ChatTemplateOptions()
        reserved = sorted(set(o.extra_context) & set(_RESERVED))
        if reserved:
            raise RenderError(
                f"Render error: ChatTemplateOptions.extra_context sets {reserved}, which apply() sets itself"
                " (pass the messages, and use the options' fields of the same names)"
            )
        try:
            text = self._jinja.render(
                messages,
                add_generation_prompt=o.add_generation_prompt,
                **{
                    **o.extra_context,
                    "continue_final_message": o.continue_final_message,
                    "enable_thinking": o.enable_thinking,
                },
            )
        except jinja2.TemplateError as e:
            raise RenderError(f"Render error: {e}") from None
        return text.lstrip()

    def apply_for_generation(self, messages: Sequence[Message | Mapping[str, Any]]) -> str:
        """:meth:`apply` with ``add_generation_prompt=True``."""
        return self.apply(messages, ChatTemplateOptions.for_generation())


class Conversation:
    """A multi-turn chat: keeps the messages and renders the prompt for each user turn."""

    def __init__(self, template: ChatTemplate, system_prompt: str | None = None) -> None:
        self._messages: list[Message] = [] if system_prompt is None else [Message.system(system_prompt)]
        self.template = template
        self.options = ChatTemplateOptions.for_generation()

    @staticmethod
    def new(template: ChatTemplate, system_prompt: str) -> Conversation:
        """A conversation that opens with the system prompt ``system_prompt``."""
        return Conversation(template, system_prompt)

    @staticmethod
    def without_system(template: ChatTemplate) -> Conversation:
        """candle-examples' ``Conversation::without_system``: a conversation with no system prompt."""
        return Conversation(template)

    def with_options(self, options: ChatTemplateOptions) -> Conversation:
        """Set the rendering options (e.g. thinking); returns this conversation."""
        self.options = options
        return self

    def user_turn(self, content: str) -> str:
        """Add a user message; the prompt to generate the reply from."""
        self._messages.append(Message.user(content))
        return self.template.apply(self._messages, self.options)

    def assistant_response(self, content: str) -> None:
        """Record the generated reply."""
        self._messages.append(Message.assistant(content))

    def add_message(self, message: Message) -> None:
        """candle-examples' ``Conversation::add_message``: append ``message``."""
        self._messages.append(message)

    def messages(self) -> list[Message]:
        """The history so far (a copy)."""
        return list(self._messages)

    def clear(self) -> None:
        """Forget the history, keeping a leading system prompt."""
        keep = self._messages[:1] if self._messages and self._messages[0].role == "system" else []
        self._messages[:] = keep

    def format_history(self) -> str:
        """The whole conversation rendered without a generation prompt."""
        return self.template.apply(self._messages, ChatTemplateOptions.for_training())
