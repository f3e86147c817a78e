"""The Kaleido subject-to-video model: DiT with R-RoPE, engine, prompt/output I/O, weight-layout maps."""
