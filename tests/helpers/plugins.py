"""Plugin objects defined in tests (passed in Python, not installed)."""

from __future__ import annotations

import types

from snnbridge import Adjustment, Option, PluginInfo, SiteCorrection, hookimpl


def fixed_threshold(name: str, values: dict[str, float] | float):
    """A threshold plugin object returning fixed thresholds (per site name, or one for all)."""

    class Fixed:
        @hookimpl
        def snnbridge_plugin_info(self):
            return PluginInfo(summary="fixed thresholds (test)", provides=("threshold",))

        @hookimpl
        def snnbridge_estimate_threshold(self, ctx):
            if isinstance(values, dict):
                return dict(values)
            return {site: float(values) for site in ctx.sites}

    obj = Fixed()
    obj.name = name
    return obj


def recorder(name: str, log: list, **info):
    """A configure-stage plugin object that records the order in which it is called."""

    class Rec:
        @hookimpl
        def snnbridge_plugin_info(self):
            return PluginInfo(summary="records calls (test)", **info)

        @hookimpl
        def snnbridge_configure_neuron(self, site, spec):
            log.append((name, site.name))
            return None

        @hookimpl
        def snnbridge_correct_error(self, snn):
            log.append((name, "correct"))

    obj = Rec()
    obj.name = name
    return obj


def module_plugin(name: str, **info) -> types.SimpleNamespace:
    """A plugin object with only an info hook and the given PluginInfo fields."""

    class P:
        @hookimpl
        def snnbridge_plugin_info(self):
            return PluginInfo(summary=f"{name} (test)", **info)

        @hookimpl
        def snnbridge_add_options(self):
            return [Option("fraction", float, 0.5, "a test option")]

    obj = P()
    obj.name = name
    return obj


class WarmupShift(SiteCorrection):
    """A runtime correction for the save/load tests: a 2-step network warm-up, then v0 + 0.1."""

    presim_steps, scope = 2, "network"

    def adjust(self, site, record, v0):
        return Adjustment(v0=v0 + 0.1)
