"""The fakes' credentials: the tokens the router sends the fake backends and Hub, and the
Space's id. Here, apart from conftest.py, so that the support helpers and the fixtures can
both use them."""

from __future__ import annotations

WORKER_TOKEN = "wk-secret-4f1c9a2e"
SPACE_TOKEN = "sp-secret-77ab01cd"
HF_TOKEN = "hf_fakeSecretToken123456"
SPACE_ID = "acme/chat-llm"
SECRETS = (WORKER_TOKEN, SPACE_TOKEN, HF_TOKEN)
