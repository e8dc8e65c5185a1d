"""Gateway mode: Refinery without a local engine, in front of an OpenAI-compatible backend.

`refinery serve --backend http://vllm:8000/v1` serves the same API as the in-process server:
plain requests are proxied to the backend byte for byte; strategy requests go to a Refinery
backend whole, proxied the same way (`backend_kind` tells which backend it is), and otherwise
run through a `Sampler` over httpx (`remote_sampler`), so every strategy runs unchanged.
docs/deploy.md, "Remote-backend (gateway) mode", says what differs from the in-process engine.
"""
