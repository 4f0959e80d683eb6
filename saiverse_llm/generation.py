"""The generation loop: from a rendered prompt to text, token by token.

(Being rewritten: today this wraps ``Llama.create_completion``.)
"""

from __future__ import annotations

from typing import Any

from saiverse_llm.errors import ContextOverflowError, RetryDivergedError
from saiverse_llm.loading import LoadedModel, usable_n_ctx
from saiverse_llm.request import Request
from saiverse_llm.schema import schema_grammar
from saiverse_llm.templates import PromptInfo


class TokenBudget:
    """A stopping criterion that enforces max_tokens on every path and counts tokens.

    llama-cpp-python skips its own max_tokens check while byte tokens form incomplete UTF-8,
    so a reply could run past the limit. The criterion is called once per sampled token
    (inside ``Llama.generate``) with the evaluated ids, and once more after the loop with the
    same ids: that last call is recognised (no new id since) and answered False, so it
    cannot turn ``finish_reason`` into "stop"."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sampled = 0
        self.blocked = False
        self._last_len = -1

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        n = len(input_ids)
        if n == self._last_len:
            return False  # the after-loop check, not a new token
        self._last_len = n
        self.sampled += 1
        if self.sampled > self.limit:
            self.blocked = True
            return True
        return False

    def completion_tokens(self, finish_reason: str | None) -> int:
        """Tokens in the reply: samples, less a blocked one and an end-of-generation one."""
        return max(0, self.sampled - self.blocked - (1 if finish_reason == "stop" else 0))


def unseen(produced: str, emitted: str) -> str:
    """The part of ``produced`` not yet yielded; raises if a retry diverged."""
    if len(produced) <= len(emitted):
        if not emitted.startswith(produced):
            raise RetryDivergedError(
                "a retried stream produced different text than was already yielded "
                f"({produced!r} vs {emitted[: len(produced)]!r}); not repeating or mixing text"
            )
        return ""
    if not produced.startswith(emitted):
        raise RetryDivergedError(
            "a retried stream produced different text than was already yielded "
            f"({produced[: len(emitted)]!r} vs {emitted!r}); not repeating or mixing text"
        )
    return produced[len(emitted) :]


def completion_args(
    model: LoadedModel, prompt: PromptInfo, request: Request, seed: int, model_name: str
) -> tuple[dict[str, Any], TokenBudget]:
    """llama-cpp-python ``create_completion`` arguments for a rendered prompt."""
    n_ctx = usable_n_ctx(model.llm)
    if len(prompt.tokens) >= n_ctx:
        raise ContextOverflowError(
            f"{model_name}: the prompt has {len(prompt.tokens)} tokens but n_ctx is "
            f"{n_ctx}. Fix: raise context_length in the model config or send less history"
        )
    grammar = request.grammar
    if grammar is None and request.response_schema is not None:
        grammar = schema_grammar(request.response_schema)
    from llama_cpp import StoppingCriteriaList

    max_tokens = min(request.max_tokens, n_ctx - len(prompt.tokens))
    budget = TokenBudget(max_tokens)
    criteria = StoppingCriteriaList([budget])
    if prompt.stopping_criteria is not None:
        criteria.extend(prompt.stopping_criteria)
    args: dict[str, Any] = {
        "prompt": prompt.tokens,
        "max_tokens": max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop": [*request.stop, *prompt.stop],
        "seed": seed,
        "grammar": grammar,
        "stopping_criteria": criteria,
        **request.extra,
    }
    return args, budget
