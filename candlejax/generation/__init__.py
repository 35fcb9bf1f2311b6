"""Text generation: sampling, repeat penalty, the compiled decode loop and streaming text.

Candle: ``candle_transformers::generation`` (``LogitsProcessor``, ``Sampling``),
``candle_transformers::utils::apply_repeat_penalty`` and ``candle_examples::TokenOutputStream``.

Sketch (needs a model)::

    from candlejax.generation import LogitsProcessor, Sampling, generate, TokenOutputStream
    from candlejax.models import llama
    lp = LogitsProcessor.from_sampling(42, Sampling.TopKThenTopP(k=40, p=0.9, temperature=0.8))
    for tok in generate(llama.step, model, model.new_cache(1, 256), prompt_ids, 128, lp, eos_token_id=eos):
        ...
"""

from candlejax.generation.generate import (
    PREFILL_CHUNK,
    DecodeFns,
    Generation,
    StepFn,
    StepProgram,
    check_prompt_not_text,
    compile_generation,
    decode_fns,
    generate,
    prefill_bucket,
    prefill_chunks,
)
from candlejax.generation.penalty import (
    RecentTokens,
    apply_repeat_penalty,
    apply_repeat_penalty_mask,
    context_mask,
)
from candlejax.generation.sampling import (
    MIN_TEMPERATURE,
    All,
    ArgMax,
    GumbelSoftmax,
    LogitsProcessor,
    Sampling,
    TopK,
    TopKThenTopP,
    TopP,
    candle_softmax,
    logits_status,
    normalize_sampling,
    sample_jax,
    sampling_from_args,
    sampling_key,
    seed_key,
)
from candlejax.generation.stream import TokenOutputStream

__all__ = [
    "MIN_TEMPERATURE",
    "PREFILL_CHUNK",
    "All",
    "ArgMax",
    "DecodeFns",
    "Generation",
    "StepProgram",
    "GumbelSoftmax",
    "LogitsProcessor",
    "RecentTokens",
    "Sampling",
    "StepFn",
    "TokenOutputStream",
    "check_prompt_not_text",
    "compile_generation",
    "TopK",
    "TopKThenTopP",
    "TopP",
    "apply_repeat_penalty",
    "apply_repeat_penalty_mask",
    "candle_softmax",
    "context_mask",
    "decode_fns",
    "generate",
    "logits_status",
    "normalize_sampling",
    "prefill_bucket",
    "prefill_chunks",
    "sample_jax",
    "sampling_from_args",
    "sampling_key",
    "seed_key",
]
