"""The llama.cpp engine: llama-server processes behind the front, on the CPU."""
