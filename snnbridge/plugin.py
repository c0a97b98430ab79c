"""Plugin metadata (:class:`PluginInfo`) and the capability rules used to validate recipes."""

from __future__ import annotations

from dataclasses import dataclass

#: capabilities at most one plugin of a recipe may provide
EXCLUSIVE_CAPABILITIES = frozenset({"threshold", "activation", "v0_base", "step_shift"})


@dataclass(frozen=True)
class PluginInfo:
    """What a plugin is and how it combines with others (see ``snnbridge_plugin_info``)."""

    summary: str
    kind: str = "method"  # "method", "backend" or "training"
    reference: str = ""
    provides: tuple[str, ...] = ()
    fallback: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    needs_data: bool = False

    def __post_init__(self):
        if self.kind not in ("method", "backend", "training"):
            raise ValueError(f"PluginInfo.kind must be 'method', 'backend' or 'training', got {self.kind!r}")
        for name in ("provides", "fallback", "requires", "conflicts", "after"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(value))
