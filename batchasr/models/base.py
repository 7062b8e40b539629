"""What every config dataclass shares (mlx-lm's BaseModelArgs pattern)."""
from __future__ import annotations


class BaseModelArgs:
    """Dataclass fields are the checkpoint config's own keys (config.yaml / config.json), so a
    config block maps onto them directly; keys a port does not use are ignored. Checks of
    unsupported values belong in the dataclass's `__post_init__`."""

    @classmethod
    def from_dict(cls, conf: dict | None = None, **overrides):
        conf = {**(conf or {}), **overrides}
        return cls(**{k: v for k, v in conf.items() if k in cls.__dataclass_fields__})
