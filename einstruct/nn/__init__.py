"""The runtime that generated layers import: plain Python shared by every layer and standalone file."""

__all__: list[str] = []
