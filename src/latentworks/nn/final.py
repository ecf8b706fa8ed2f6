"""The adaLN final layer of the diffusion transformers (DiT, SD3's MM-DiT, FLUX).

``linear(modulate(LN(x), shift, scale))`` with (shift, scale) from the conditioning vector. Both linear layers
start at zero (DiT's adaLN-Zero recipe), so a freshly built network predicts 0. Parameter names
(``modulation.linear.*``, ``linear.*``) are what the checkpoint key maps expect.
"""

from __future__ import annotations

from torch import Tensor, nn

from latentworks.nn.modulation import AdaLNModulation, layer_norm, modulate


class FinalLayer(nn.Module):
    """(B, N, dim) tokens and a (B, cond_dim=dim) conditioning vector -> (B, N, out_dim)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.modulation = AdaLNModulation(dim, dim, 2, zero_init=True)  # (shift, scale)
        self.linear = nn.Linear(dim, out_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c)
        return self.linear(modulate(layer_norm(x), shift, scale))
