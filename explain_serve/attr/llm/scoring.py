"""Log-probabilities of a fixed target continuation after many prompts, as padded batches.

Teacher forcing: ``log p(t_j | prompt, t_<j)`` for every target position comes from one forward
of ``prompt + target`` (a causal model's logit at position ``len(prompt) - 1 + j`` predicts
``t_j``). Prompts of different lengths are right-padded with an attention mask: real tokens never
attend to the padding that follows them and keep positions ``0..len-1``, so every row equals its
unpadded forward. ``step_by_step`` instead runs one forward per target token over the growing
prefix (no KV cache), the literal generation process; the numbers agree.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# logits of one forward held at once (rows x length x vocabulary x 4 bytes)
LOGITS_BUDGET_BYTES = 256 * 2**20


def _vocab_size(model) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", None)
    return int(size) if size else 32000


def _row_chunks(n_rows: int, length: int, model, batch_size: Optional[int]) -> Iterator[slice]:
    if batch_size is None:
        batch_size = max(1, LOGITS_BUDGET_BYTES // max(1, length * _vocab_size(model) * 4))
    for start in range(0, n_rows, batch_size):
        yield slice(start, min(start + batch_size, n_rows))


def pad_right(seqs: Sequence[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """Stack 1-D id tensors, right-padded: ``(ids, attention_mask)``, both ``(n, max_len)``."""
    longest = max(int(s.numel()) for s in seqs)
    device = seqs[0].device
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, : s.numel()] = s
        mask[i, : s.numel()] = 1
    return ids, mask


def model_logits(model, ids: Tensor, mask: Tensor) -> Tensor:
    """Logits ``(n, length, vocab)`` of a Hugging Face style causal LM (no cache kept)."""
    return logits_of(model(input_ids=ids, attention_mask=mask, use_cache=False))


def logits_of(output) -> Tensor:
    """The ``(n, length, vocab)`` logits of a model output (an object with ``.logits`` or a tensor)."""
    logits = output.logits if hasattr(output, "logits") else output
    if logits.dim() == 4:  # (n, heads of speculative decoders, length, vocab): the first head
        logits = logits[:, 0]
    return logits


def _forced(model, prompts: List[Tensor], target: Tensor, pad_id: int) -> Tensor:
    """One forward of ``prompt + target`` per row: ``(n, len(target))`` log-probabilities."""
    ids, mask = pad_right([torch.cat([p, target]) for p in prompts], pad_id)
    logits = model_logits(model, ids, mask)
    lengths = torch.tensor([p.numel() for p in prompts], device=logits.device)
    pos = (lengths - 1).unsqueeze(1) + torch.arange(target.numel(), device=logits.device)  # (n, T)
    picked = logits.gather(1, pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))  # (n, T, V)
    log_probs = F.log_softmax(picked.float() if picked.dtype in (torch.float16, torch.bfloat16) else picked, dim=-1)
    index = target.to(logits.device).view(1, -1, 1).expand(len(prompts), -1, 1)
    return log_probs.gather(-1, index).squeeze(-1)


def target_log_probs(
    model,
    prompts: Sequence[Tensor],
    target: Tensor,
    pad_id: int,
    step_by_step: bool = False,
    batch_size: Optional[int] = None,
) -> Tensor:
    """``log p(target_j | prompt_i, target_<j)``, shape ``(len(prompts), len(target))``.

    ``prompts`` are 1-D id tensors (not empty); rows are evaluated ``batch_size`` at a time
    (default: as many as keep the logits within ``LOGITS_BUDGET_BYTES``).
    """
    prompts = [p.reshape(-1).long() for p in prompts]
    for p in prompts:
        if p.numel() == 0:
            raise ValueError(
                "a perturbed prompt has no tokens left, so the first target token has nothing to condition on: "
                "use a tokenizer that adds a BOS token, non-empty baselines, or keep a feature fixed"
            )
    target = target.reshape(-1).long().to(prompts[0].device)
    longest = max(p.numel() for p in prompts) + target.numel()
    rows = []
    with torch.no_grad():
        for sl in _row_chunks(len(prompts), longest, model, batch_size):
            chunk = prompts[sl]
            if step_by_step:
                cols = [_forced(model, chunk, target[: j + 1], pad_id)[:, j] for j in range(target.numel())]
                rows.append(torch.stack(cols, 1))
            else:
                rows.append(_forced(model, chunk, target, pad_id))
    return torch.cat(rows, 0)
