"""Choose the next token of every sampling request at once, from float32 logits.

Order, as vLLM: logit bias, penalties, then greedy rows take the argmax; the others are divided
by their temperature, cut by top-k, top-p and min-p, and drawn. A seeded request draws with its
own generator from noise of its own row only, so its tokens do not depend on the rest of the
batch. Logprobs are log-softmax of the raw logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from monovl.engine.outputs import TokenLogprob
from monovl.engine.request import Request


@dataclass(frozen=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


def sample(logits: torch.Tensor, requests: list[Request]) -> SamplerOutput:
    # logits: [B, vocab] float32, row b for requests[b]
    raw = logits
    logits = apply_logit_bias(logits, requests)
    logits = apply_penalties(logits, requests)
    greedy_rows = [r.params.greedy for r in requests]
    chosen = logits.argmax(dim=-1)
    if not all(greedy_rows):  # decided on the host: an all-greedy batch never waits for the device here
        greedy = torch.tensor(greedy_rows, device=logits.device)
        drawn = draw(logits, requests, ~greedy)
        chosen = torch.where(greedy, chosen, drawn)
    token_ids = chosen.tolist()
    return SamplerOutput(token_ids, compute_logprobs(raw, requests, token_ids))


def apply_logit_bias(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    rows = [(b, r.params.logit_bias) for b, r in enumerate(requests) if r.params.logit_bias]
    if not rows:
        return logits
    logits = logits.clone()
    for b, bias in rows:
        ids = torch.tensor(list(bias), device=logits.device)
        logits[b, ids] += torch.tensor(list(bias.values()), device=logits.device, dtype=logits.dtype)
    return logits


def apply_penalties(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    params = [r.params for r in requests]
    if all(p.repetition_penalty == 1 and p.presence_penalty == 0 and p.frequency_penalty == 0 for p in params):
        return logits
    batch, vocab = logits.shape
    device = logits.device
    counts = torch.zeros(batch, vocab, device=device)
    seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device)
    for b, request in enumerate(requests):
        outputs = torch.tensor(request.output_token_ids, dtype=torch.long, device=device)
        counts[b].scatter_add_(0, outputs, torch.ones_like(outputs, dtype=counts.dtype))
        seen[b, torch.tensor(request.token_ids, dtype=torch.long, device=device)] = True
    repetition = torch.tensor([p.repetition_penalty for p in params], device=device)[:, None]
    # Repetition penalty covers prompt and output (as vLLM); it shrinks positive logits and grows negative ones.
    penalized = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(seen, penalized, logits)
    frequency = torch.tensor([p.frequency_penalty for p in params], device=device)[:, None]
    presence = torch.tensor([p.presence_penalty for p in params], device=device)[:, None]
    return logits - frequency * counts - presence * (counts > 0)


def draw(logits: torch.Tensor, requests: list[Request], rows: torch.Tensor) -> torch.Tensor:
    """Sampled ids for the `rows` that sample (other rows get a meaningless value)."""
    device = logits.device
    temperature = torch.tensor([max(r.params.temperature, 1e-5) for r in requests], device=device)
    logits = logits / temperature[:, None]
    logits = top_k_top_p_min_p(logits, requests)
    probs = torch.softmax(logits, dim=-1)
    # Exponential-race sampling: argmax(p / E) with E ~ Exp(1) draws from p.
    noise = torch.empty_like(probs).exponential_()
    for b, request in enumerate(requests):
        if request.generator is not None and bool(rows[b]):
            noise[b] = torch.empty_like(probs[b]).exponential_(generator=request.generator)
    return (probs / noise).argmax(dim=-1)


def top_k_top_p_min_p(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    params = [r.params for r in requests]
    vocab = logits.shape[-1]
    device = logits.device
    top_k = torch.tensor([p.top_k_limit or vocab for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], device=device)
    min_p = torch.tensor([p.min_p for p in params], device=device)
    if bool((top_k < vocab).any()) or bool((top_p < 1).any()):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        rank = torch.arange(vocab, device=device)[None, :]
        drop = rank >= top_k[:, None]
        probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
        # Keep the smallest set whose mass reaches top_p (always at least the best token).
        drop |= (probs.cumsum(-1) - probs) >= top_p[:, None]
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    if bool((min_p > 0).any()):
        probs = torch.softmax(logits, dim=-1)
        threshold = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def token_logprobs(logits: torch.Tensor, token_ids: list[int], k: int) -> list[TokenLogprob]:
    """Row i's logprob of token_ids[i] and its top k, from log-softmax of float32 logits."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(-1, torch.tensor(token_ids, device=logits.device)[:, None]).squeeze(-1).tolist()
    values, ids = logprobs.topk(max(k, 1), dim=-1)
    values, ids = values[:, :k].tolist(), ids[:, :k].tolist()
    return [
        TokenLogprob(token, value, list(zip(top_ids, top_values, strict=True)))
        for token, value, top_ids, top_values in zip(token_ids, chosen, ids, values, strict=True)
    ]


def compute_logprobs(raw: torch.Tensor, requests: list[Request], token_ids: list[int]) -> list[TokenLogprob | None]:
    wanted = [r.params.logprobs for r in requests]
    if all(k is None for k in wanted):
        return [None] * len(requests)
    logprobs = torch.log_softmax(raw, dim=-1)
    top = max(k or 0 for k in wanted)
    values, ids = logprobs.topk(max(top, 1), dim=-1)
    chosen = logprobs.gather(-1, torch.tensor(token_ids, device=raw.device)[:, None]).squeeze(-1).tolist()
    values, ids = values.tolist(), ids.tolist()
    out: list[TokenLogprob | None] = []
    for b, k in enumerate(wanted):
        if k is None:
            out.append(None)
        else:
            pairs = list(zip(ids[b][:k], values[b][:k], strict=True))
            out.append(TokenLogprob(token_ids[b], chosen[b], pairs))
    return out
