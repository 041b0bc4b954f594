"""The networks (DiT, VAE, UMT5 text encoder, CLIP vision) and their building blocks: pure math, no files."""
