"""ComfyUI's CLIP-loader ``type`` choice lists, as data beside the families that use some of them.

Each family names its own type (``ComfyNames.clip_type``); these are ComfyUI's complete lists (``nodes.py``
CLIPLoader / DualCLIPLoader, in ComfyUI's order) so that workflows naming any of them validate. Types no
registered family uses are refused when the loader runs. Several are also family names (``sdxl``, ``sd3``,
``flux``), which is why the lists live here and not in the nodes.
"""

from __future__ import annotations

from latentworks.families.sd3 import SD3

CLIP_TYPES: tuple[str, ...] = (
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
    "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2", "ovis",
    "longcat_image", "cogvideox", "lens", "pixeldit", "ideogram4", "boogu", "krea2", "joyimage", "mage",
    "minimax", "yue2",
)  # fmt: skip
DUAL_CLIP_TYPES: tuple[str, ...] = (
    "sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15", "kandinsky5",
    "kandinsky5_image", "ltxv", "newbie", "ace",
)  # fmt: skip

# TripleCLIPLoader has no ``type`` input: its three files are SD3's CLIP-L, CLIP-G and T5.
assert SD3.comfy is not None
TRIPLE_CLIP_TYPE: str = SD3.comfy.clip_type
