"""The runtime package of generated layers (importable with only torch)."""

__all__: list[str] = []
