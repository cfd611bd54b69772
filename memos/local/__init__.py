"""The local runtime: models served as `local/<name>`, activation memory (KV caches) and parametric
memory (LoRA adapters). torch, transformers and peft are imported only inside functions that need them."""
