"""The llama.cpp engine: GGUF chat models and sentence embeddings on the CPU."""
