"""Test-wide settings: never reach a model hub; keep vLLM's CPU KV cache small."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
