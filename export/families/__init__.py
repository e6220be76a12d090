"""Model families, one package each; ``langcolor.client.families`` discovers and registers them.

A family package's ``__init__`` builds its ``Family`` record without importing torch, and holds its
config dataclasses; ``network``, ``training`` and ``evaluation`` submodules hold the torch side.
"""
