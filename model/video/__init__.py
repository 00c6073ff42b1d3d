"""lactron.model.video: the autoregressive video diffusion model (Wan-style DiT with LaCT)."""
