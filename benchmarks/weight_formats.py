"""Forward time and resident weight size of one FLUX transformer stored in each weight format (not a test).

A random FLUX (width 1024, 1 double + 1 single block by default) is written as bf16, fp8 e4m3fn, ComfyUI scaled
fp8 and GGUF Q8_0 / Q4_0 (``gguf.quants.quantize``), each loaded through ``read_checkpoint`` +
``model_from_parts`` with fp8/GGUF weights kept in their storage format, and timed on one forward pass (best of
``--runs``, interleaved). Printed per format: the forward time as a ratio to the bf16 file's dense model in the
same process, and the bytes the model's weights hold as a ratio to that model's.

    .venv/bin/python benchmarks/weight_formats.py [--device cpu] [--dtype bfloat16] [--runs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=1, help="double blocks; as many single blocks")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import gguf
    from gguf import quants

    from latentworks.checkpoints.formats import fp8_file_tensors
    from latentworks.checkpoints.io import save_file_atomic
    from latentworks.checkpoints.keymaps.flux_bfl import ours_to_flux_bfl
    from latentworks.diffusion.conditioning import Conditioning
    from latentworks.families.load import read_checkpoint
    from latentworks.models.flux import Flux, FluxConfig
    from latentworks.nn.quant import stored_nbytes
    from latentworks.pipelines.loading import model_from_parts

    warnings.simplefilter("ignore")  # the fp8-upcast notice on devices without fp8 compute
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    cfg = FluxConfig(
        in_channels=16, width=args.width, num_heads=args.width // 128, double_depth=args.depth,
        single_depth=args.depth, context_dim=args.width, pooled_dim=768, axes_dim=(16, 56, 56),
    )  # fmt: skip
    torch.manual_seed(0)
    net = Flux(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    source = {k: v.to(torch.bfloat16) for k, v in ours_to_flux_bfl(net.state_dict(), cfg).items()}
    del net
    folder = Path(tempfile.mkdtemp())
    files = {"bf16": folder / "bf16.safetensors"}
    save_file_atomic(source, files["bf16"])
    for name in ("fp8_e4m3fn", "fp8_e4m3fn_scaled"):
        files[name] = folder / f"{name}.safetensors"
        save_file_atomic(fp8_file_tensors(source, "", name), files[name])
    for qtype in ("Q8_0", "Q4_0"):
        files[qtype] = folder / f"{qtype}.gguf"
        writer = gguf.GGUFWriter(str(files[qtype]), arch="flux")
        gtype = gguf.GGMLQuantizationType[qtype]
        for k, v in source.items():
            arr = v.float().numpy()
            if v.ndim == 2 and arr.shape[-1] % 32 == 0:
                writer.add_tensor(k, quants.quantize(arr, gtype), raw_dtype=gtype)
            else:
                writer.add_tensor(k, arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    models = {
        name: model_from_parts(
            read_checkpoint(f, dtype=dtype), dtype=dtype, device=device, without_vae=True
        ).denoiser_net
        for name, f in files.items()
    }
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 64, 64, generator=g).to(device)
    cond = Conditioning(
        tokens=torch.randn(1, 128, args.width, generator=g).to(device),
        pooled=torch.randn(1, 768, generator=g).to(device),
        extra={"guidance": torch.tensor([3.5], device=device)},
    )
    t = torch.tensor([0.5], device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    best = {name: float("inf") for name in models}
    with torch.no_grad():
        for m in models.values():
            m(x, t, cond)  # warm-up
        for _ in range(args.runs):
            for name, m in models.items():
                sync()
                start = time.perf_counter()
                m(x, t, cond)
                sync()
                best[name] = min(best[name], time.perf_counter() - start)

    def held(m: torch.nn.Module) -> int:
        return sum(stored_nbytes(p) for p in m.parameters())

    base_time, base_bytes = best["bf16"], held(models["bf16"])
    print(f"FLUX width {args.width}, {args.depth}+{args.depth} blocks, {args.dtype} compute on {device}")
    print(f"{'format':<20}{'forward s':>10}{'vs bf16':>9}{'weights MB':>12}{'vs bf16':>9}")
    for name, m in models.items():
        b = held(m)
        print(
            f"{name:<20}{best[name]:>10.3f}{best[name] / base_time:>9.2f}{b / 1e6:>12.1f}{b / base_bytes:>9.2f}"
        )


if __name__ == "__main__":
    main()
