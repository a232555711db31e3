"""``nn.MultiheadAttention`` as separate ``nn.Linear`` projections and plain tensor ops.

``nn.MultiheadAttention`` hands its packed ``in_proj_weight`` and its ``out_proj.weight`` to
``F.multi_head_attention_forward``: no conv/linear module is ever called, so a toolkit that
quantizes or compresses modules (torch.ao FX, NNI, coremltools' read-back) sees no layer, and
the function reads sizes in ways tracers stumble on (coremltools' ``aten::Int`` of a traced
size, the TorchScript exporter's transpose of unknown rank in a quantized model).
:class:`DecomposedAttention` computes the same function (eval mode) with ``q_proj``,
``k_proj``, ``v_proj`` and ``out_proj`` linear layers a toolkit can see.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DecomposedAttention(nn.Module):
    """Multi-head attention (eval mode, no dropout) with one ``nn.Linear`` per projection."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        dim, heads = mha.embed_dim, mha.num_heads
        self.num_heads, self.head_dim, self.batch_first = heads, dim // heads, mha.batch_first
        bias = mha.in_proj_bias is not None
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=mha.out_proj.bias is not None)
        assert mha.in_proj_weight is not None
        with torch.no_grad():
            for i, proj in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                proj.weight.copy_(mha.in_proj_weight[i * dim:(i + 1) * dim])
                if bias:
                    proj.bias.copy_(mha.in_proj_bias[i * dim:(i + 1) * dim])
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), \
            self._heads(self.v_proj(value))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if is_causal and attn_mask is None:
            size = (scores.shape[-2], scores.shape[-1])
            attn_mask = torch.ones(size, dtype=torch.bool, device=scores.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(
                scores.shape[0], self.num_heads, *attn_mask.shape[-2:])
            scores = (scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool
                      else scores + mask)
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            scores = (scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool
                      else scores + pad)
        weights = F.softmax(scores, dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2)
        out = self.out_proj(out.reshape(out.shape[0], out.shape[1], -1))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights


def decomposable(mha: nn.MultiheadAttention) -> bool:
    """Self-contained projections of one width (no bias_k / bias_v, no zero attention)."""
    return (mha._qkv_same_embed_dim and mha.bias_k is None and mha.bias_v is None
            and not mha.add_zero_attn and mha.in_proj_weight is not None)


def decompose_attention(model: nn.Module) -> list[str]:
    """Replace (in place) every decomposable ``nn.MultiheadAttention`` by a
    :class:`DecomposedAttention` with its weights; returns the module names replaced."""
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention) and decomposable(module):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, DecomposedAttention(module).train(module.training))
            replaced.append(name)
    return replaced
