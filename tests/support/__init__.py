"""Shared test support: loopback servers and helpers that every suite uses."""
