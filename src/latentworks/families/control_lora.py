"""Control-LoRA (Stability AI's ``control-lora-*-rank128/256`` files for SDXL, as ComfyUI loads them).

A Control-LoRA is a U-Net ControlNet stored against the base model it was trained on: for the layers it
shares with the U-Net's encoder half it keeps only a low-rank difference, ``<module>.up`` (out, r[, 1, 1]) and
``<module>.down`` (r, in[, k, k]) in the original LDM names (``input_blocks.*``, ``middle_block.*``,
``time_embed.*``, ``label_emb.*``), and full tensors for everything else (norms, biases, the hint encoder
``input_hint_block.*``, ``zero_convs.*``, ``middle_block_out.*``). The marker key ``lora_controlnet`` names the
format. The full ControlNet is

    weight = base_weight + (up.flatten(1) @ down.flatten(1)).reshape(base_weight.shape)

for every module with a pair (``base_weight`` = the model's own tensor of the same name), and the file's tensor
for every other key, any key the file lacks coming from the model. The file alone cannot be run: the ControlNet
is rebuilt from the model it is applied to, the first time it meets it (:meth:`ControlLoRA.check_model`, which
the sampler calls before each use), with the model's U-Net config and the file's hint-encoder widths.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from latentworks.checkpoints.keymaps.controlnet import controlnet_original_module_map, controlnet_shapes
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.control import ControlResiduals
from latentworks.models.controlnet import ControlNet, ControlNetConfig
from latentworks.models.unet import UNet

MARKER = "lora_controlnet"


def is_control_lora(keys: Mapping[str, object]) -> bool:
    return MARKER in keys


def _hint_widths(shapes: Mapping[str, tuple[int, ...]], source: str) -> tuple[tuple[int, ...], int]:
    """The hint encoder's widths (16, 32, 96, 256) and input channels from ``input_hint_block.{0, 2, ...}``."""
    convs = sorted(
        int(k.split(".")[1]) for k in shapes if k.startswith("input_hint_block.") and k.endswith(".weight")
    )
    if len(convs) < 2 or len(convs) % 2:
        raise ValueError(f"{source}: a Control-LoRA needs an input_hint_block with an even number of convs")
    first = shapes["input_hint_block.0.weight"]
    strided = [shapes[f"input_hint_block.{i}.weight"][0] for i in convs[2:-1:2]]  # convs 4, 8, ...
    return (first[0], *strided), first[1]


class ControlLoRA(nn.Module):
    """A Control-LoRA file, rebuilt into a :class:`ControlNet` against the model it is applied to.

    ``tensors`` are the file's tensors (LDM names, the marker key dropped). The rebuilt ControlNet is kept for
    the last model seen (a weak reference) and is a submodule, so ``.to()`` moves it with this object.
    """

    def __init__(self, tensors: Mapping[str, Tensor], *, source: str = "Control-LoRA") -> None:
        super().__init__()
        self.tensors = {k: v for k, v in tensors.items() if k != MARKER}
        self.source = source
        self.source_name: str | None = None
        shapes = {k: tuple(v.shape) for k, v in self.tensors.items()}
        self.hint_channels, self.hint_in_channels = _hint_widths(shapes, source)
        self.net: ControlNet | None = None
        self._model: weakref.ref[UNet] | None = None

    @property
    def hint_factor(self) -> int:
        return 2 ** (len(self.hint_channels) - 1)

    def check_model(self, network: object) -> None:
        """Rebuild the ControlNet against ``network`` (a U-Net) unless it was built for it already."""
        if not isinstance(network, UNet):
            raise ValueError(
                f"{self.source}: a Control-LoRA is for SD-style U-Nets (SDXL) but the model is a "
                f"{type(network).__name__}; use a ControlNet made for the model's family"
            )
        if self._model is not None and self._model() is network and self.net is not None:
            return
        self.net = build_control_lora(
            self.tensors, network, self.hint_channels, self.hint_in_channels, self.source
        )
        self.net.source_name = self.source_name
        self._model = weakref.ref(network)

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning, hint: Tensor) -> ControlResiduals:
        if self.net is None:
            raise RuntimeError(
                f"{self.source}: a Control-LoRA runs only after check_model(model) has rebuilt it"
            )
        return self.net(x, t, cond, hint)


@torch.no_grad()
def build_control_lora(
    tensors: Mapping[str, Tensor],
    unet: UNet,
    hint_channels: tuple[int, ...],
    hint_in_channels: int = 3,
    source: str = "Control-LoRA",
) -> ControlNet:
    """The full ControlNet of a Control-LoRA's ``tensors`` (LDM names) over ``unet``'s weights (see the module
    docstring for the rule). Raises a ValueError naming the key when a tensor does not fit the model."""
    config = ControlNetConfig(
        unet=unet.config, hint_channels=hint_channels, hint_in_channels=hint_in_channels
    )
    module_map = controlnet_original_module_map(config)  # ours -> LDM module
    ours_of = {ldm: ours for ours, ldm in module_map.items()}
    shapes = controlnet_shapes(config)
    base = unet.state_dict()
    state: dict[str, Tensor] = {k: base[k] for k in shapes if k in base}
    used: set[str] = set()
    for key, tensor in tensors.items():
        module, _, param = key.rpartition(".")
        if param in ("up", "down"):
            continue
        if module not in ours_of or f"{ours_of[module]}.{param}" not in shapes:
            raise ValueError(f"{source}: tensor {key!r} is not part of a ControlNet for this model")
        ours = f"{ours_of[module]}.{param}"
        if tuple(tensor.shape) != shapes[ours]:
            raise ValueError(
                f"{source}: tensor {key!r} has shape {tuple(tensor.shape)} but this model's ControlNet needs "
                f"{shapes[ours]}; is it a Control-LoRA for this model family (SDXL)?"
            )
        state[ours] = tensor
        used.add(key)
    for key, up in tensors.items():
        module, _, param = key.rpartition(".")
        if param != "up":
            continue
        down = tensors.get(f"{module}.down")
        ours = f"{ours_of.get(module, '?')}.weight"
        if down is None or ours not in state:
            raise ValueError(
                f"{source}: LoRA pair {module!r} has no '.down' or no base weight in the model; is it a "
                "Control-LoRA for this model family (SDXL)?"
            )
        weight = state[ours]
        delta = up.flatten(1).to(weight.device, torch.float32) @ down.flatten(1).to(
            weight.device, torch.float32
        )
        if delta.numel() != weight.numel():
            raise ValueError(
                f"{source}: LoRA pair {module!r} gives {tuple(delta.shape)} for a weight of shape "
                f"{tuple(weight.shape)}; is it a Control-LoRA for this model family (SDXL)?"
            )
        state[ours] = (weight.to(torch.float32) + delta.reshape(weight.shape)).to(weight.dtype)
        used |= {key, f"{module}.down"}
    missing = sorted(set(shapes) - set(state))
    if missing:
        raise ValueError(f"{source}: the Control-LoRA and the model leave {missing[:5]} unset")
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"{source}: tensors {unused[:5]} do not belong to a ControlNet for this model")
    with torch.device("meta"):
        net = ControlNet(config)
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval().requires_grad_(False)
