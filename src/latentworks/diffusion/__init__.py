"""Model-independent diffusion math: the denoiser contract, schedules, samplers, guidance, noise."""
