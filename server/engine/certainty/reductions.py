"""Per-token self-certainty and entropy from raw logits, and how they ride with the logprobs.

Self-certainty (Kang et al. 2025, "Scalable Best-of-N Selection via Self-Certainty", eq. 3) of
one step is KL(U ‖ p) between the uniform distribution over the vocabulary and the model's
next-token distribution p = softmax(z):

    KL(U ‖ p) = −log V − (1/V) Σ_j log p_j = logsumexp(z) − mean(z) − log V

on the raw logits z, before temperature, penalties, top-k/top-p or grammar masks. The entropy
H(p) = logsumexp(z) − Σ_j p_j z_j comes from the same row reductions. Both are two floats per
token: they travel back as two extra columns of the sampled-token `LogprobsTensors`, tagged with
a token id no vocabulary has, and are stripped again in the front-end process.
"""

from __future__ import annotations

import math

import torch

__all__ = ["STATISTICS_TAG", "append_statistics", "statistics_from_logprobs", "token_statistics"]

# Token id of the two extra columns. Negative: no tokenizer has it, so a tagged row can never be
# confused with real top-k logprobs.
STATISTICS_TAG = -20250217


def token_statistics(logits: torch.Tensor) -> torch.Tensor:
    """[rows, vocab] raw logits → [rows, 2] float32: (self-certainty term, entropy) per row.

    Never modifies `logits` (the sampler uses them afterwards). Computed in float32 whatever
    the model dtype, as the reference is.
    """
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1)
    certainty = lse - z.mean(dim=-1) - math.log(z.shape[-1])
    probs = torch.exp(z - lse.unsqueeze(-1))
    # Σ_j p_j z_j. (Not as a bmm: on CPU that lost three digits against float64.)
    entropy = lse - torch.linalg.vecdot(probs, z)
    return torch.stack((certainty, entropy), dim=1)


def statistics_from_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """The same two values from a float32 log-softmax of the raw logits, log p = z − lse.

    KL(U ‖ p) = −log V − mean(log p) and H(p) = −Σ_j p_j log p_j. Where vLLM already computed
    the log-softmax (sampled-token logprobs on model runner V1), this saves the logsumexp pass.
    """
    certainty = -logprobs.mean(dim=-1) - math.log(logprobs.shape[-1])
    entropy = -torch.linalg.vecdot(logprobs.exp(), logprobs)
    return torch.stack((certainty, entropy), dim=1)


def append_statistics(tensors, statistics: torch.Tensor):
    """`LogprobsTensors` with the statistics appended as two tagged columns.

    Left unchanged when its rows are not one per sampled token (full-vocabulary logprobs,
    `logprobs=-1`, have no token-id matrix): those requests simply get no statistics.
    """
    ids, values = tensors.logprob_token_ids, tensors.logprobs
    if ids.dim() != 2 or values.dim() != 2 or ids.shape[0] != statistics.shape[0]:
        return tensors
    tag = torch.full((ids.shape[0], 2), STATISTICS_TAG, dtype=ids.dtype, device=ids.device)
    return tensors._replace(
        logprob_token_ids=torch.cat((ids, tag), dim=1),
        logprobs=torch.cat((values, statistics.to(device=values.device, dtype=values.dtype)),
                           dim=1),
    )
