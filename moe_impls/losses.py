"""Auxiliary balancing losses, each a function of a RoutingRecord.

CV^2 uses the population variance (divide by E): for a load vector with one expert taking everything,
CV^2 = E - 1 exactly, and for a perfectly even one it is 0.
"""

from __future__ import annotations

import torch

from moe_impls.routing import RoutingRecord, count_per_expert


def cv_squared(values_E: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation, var/mean^2 with the population variance; 0 for a single expert."""
    values_E = values_E.float()
    if values_E.numel() < 2:
        return values_E.new_zeros(())
    return values_E.var(correction=0) / values_E.mean().pow(2).clamp_min(1e-20)


def importance_loss(routing: RoutingRecord, weight: float = 0.1) -> torch.Tensor:
    """Shazeer et al. 2017, eqs. 6-7: Importance_i = sum over the batch of gate values; w * CV(Importance)^2."""
    return weight * cv_squared(routing.gates_TE.sum(0))


def smooth_load(routing: RoutingRecord, top_k: int) -> torch.Tensor:
    """Shazeer et al. 2017, eqs. 8-10: Load_i = sum over tokens of P(x, i), a differentiable token count.

    P(x, i) = Phi((clean_i - kth_excluding(H, k, i)) / noise_std_i): the probability that expert i stays in the
    top k if only its own noise is redrawn.
    """
    if routing.clean_logits_TE is None or routing.noise_std_TE is None:
        raise ValueError("load_loss needs a noisy_topk routing record from training mode (noise std is absent)")
    H_TE = routing.logits_TE
    if top_k >= routing.num_experts:
        return H_TE.new_full((routing.num_experts,), float(routing.num_tokens))
    top_TK1 = torch.topk(H_TE, top_k + 1, dim=-1).values
    kth, kplus1th = top_TK1[:, top_k - 1 : top_k], top_TK1[:, top_k : top_k + 1]
    threshold_TE = torch.where(kth <= H_TE, kplus1th, kth)  # k-th largest among the other experts
    z_TE = (routing.clean_logits_TE - threshold_TE) / routing.noise_std_TE.clamp_min(1e-9)
    return torch.special.ndtr(z_TE).sum(0)


def load_loss(routing: RoutingRecord, top_k: int, weight: float = 0.1) -> torch.Tensor:
    """Shazeer et al. 2017, eq. 11: w * CV(Load)^2 with the smooth load."""
    return weight * cv_squared(smooth_load(routing, top_k))


def switch_loss(routing: RoutingRecord, alpha: float = 0.01) -> torch.Tensor:
    """Switch Transformer: alpha * E * sum_i f_i * P_i.

    f_i is the fraction of assignments the router chose for expert i (before capacity drops; for top-k the
    fraction of all T*k choices), P_i the mean router probability of expert i. Uniform routing gives alpha.
    """
    E = routing.num_experts
    chosen = routing.expert_idx_TK if routing.expert_idx_TK is not None else routing.expert_idx_N
    f_E = count_per_expert(chosen, E).float() / max(chosen.numel(), 1)
    P_E = routing.probs_TE.mean(0)
    return alpha * E * (f_E * P_E).sum()


def z_loss(routing: RoutingRecord, weight: float = 1e-3) -> torch.Tensor:
    """ST-MoE router z-loss: weight * mean over tokens of logsumexp(logits)^2."""
    return weight * torch.logsumexp(routing.logits_TE, dim=-1).pow(2).mean()
