"""Fakes for what cannot run here (Hugging Face's edge and Hub), served over real HTTP."""
