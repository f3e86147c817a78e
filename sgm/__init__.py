"""Generic diffusion parts: config instantiation, sigma schedules, samplers, guiders, RF loss, Wan VAE, umT5."""
