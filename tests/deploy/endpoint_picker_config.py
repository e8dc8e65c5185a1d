"""A structural check of the llm-d endpoint picker's EndpointPickerConfig (no CRD exists for it).

The picker refuses a config at start-up when a reference is dangling or a plugin type is unknown
(llm-d-router v0.10.0, pkg/epp/config/loader/validation.go); the same checks run here offline,
plus one the loader does not make: a weight on a plugin that is not a scorer is meaningless
(only scorers are weighted, configloader.go). Plugin types and their roles are the ones
registered in llm-d-router v0.10.0 that Refinery's configs use or that the docs compare.
"""

from __future__ import annotations

from typing import Any

__all__ = ["API_VERSION", "PLUGIN_ROLES", "endpoint_picker_config_errors"]

API_VERSION = "llm-d.ai/v1alpha1"
# Read by the v0.10.0 loader with a deprecation notice only.
_DEPRECATED_API_VERSION = "inference.networking.x-k8s.io/v1alpha1"

PLUGIN_ROLES = {
    "queue-scorer": "scorer",
    "kv-cache-utilization-scorer": "scorer",
    "prefix-cache-scorer": "scorer",
    "token-load-scorer": "scorer",
    "active-request-scorer": "scorer",
    "running-requests-size-scorer": "scorer",
    "session-affinity-scorer": "scorer",
    "lora-affinity-scorer": "scorer",
    "max-score-picker": "picker",
    "random-picker": "picker",
    "weighted-random-picker": "picker",
    "single-profile-handler": "profile-handler",
    "metrics-data-source": "data-source",
    "core-metrics-extractor": "extractor",
    "openai-parser": "parser",
    "passthrough-parser": "parser",
}
_FEATURE_GATES = {"flowControl", "haPopulateNonLeaderDatastore"}
_TOP_LEVEL = {"apiVersion", "kind", "featureGates", "plugins", "schedulingProfiles", "dataLayer",
              "flowControl", "requestHandler", "saturationDetector", "parser"}


def _references(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, plugin name) of every reference to a declared plugin."""
    refs = []
    for profile in config.get("schedulingProfiles", []):
        for i, plugin in enumerate(profile.get("plugins", [])):
            refs.append((f"schedulingProfiles[{profile.get('name')}].plugins[{i}]",
                         plugin.get("pluginRef", "")))
    for i, source in enumerate((config.get("dataLayer") or {}).get("sources", [])):
        refs.append((f"dataLayer.sources[{i}]", source.get("pluginRef", "")))
        for j, extractor in enumerate(source.get("extractors", [])):
            refs.append((f"dataLayer.sources[{i}].extractors[{j}]",
                         extractor.get("pluginRef", "")))
    for i, parser in enumerate((config.get("requestHandler") or {}).get("parsers", [])):
        refs.append((f"requestHandler.parsers[{i}]", parser.get("pluginRef", "")))
    detector = (config.get("flowControl") or {}).get("saturationDetector")
    if detector is not None:
        refs.append(("flowControl.saturationDetector", detector.get("pluginRef", "")))
    return refs


def endpoint_picker_config_errors(config: dict[str, Any]) -> list[str]:
    """What the picker would refuse, or what makes no sense, in the config ([] when sound)."""
    errors = []
    version = config.get("apiVersion")
    if version == _DEPRECATED_API_VERSION:
        errors.append(f"apiVersion {version} is deprecated: use {API_VERSION}")
    elif version != API_VERSION:
        errors.append(f"unknown apiVersion {version!r}")
    if config.get("kind") != "EndpointPickerConfig":
        errors.append(f"unknown kind {config.get('kind')!r}")
    errors += [f"unknown field {key!r}" for key in sorted(config.keys() - _TOP_LEVEL)]
    errors += [
        f"unknown feature gate {gate!r}"
        for gate in config.get("featureGates", [])
        if gate.split("=", 1)[0] not in _FEATURE_GATES
    ]
    roles: dict[str, str] = {}
    for i, plugin in enumerate(config.get("plugins", [])):
        kind = plugin.get("type")
        name = plugin.get("name") or kind  # the loader names a plugin after its type
        if not kind:
            errors.append(f"plugins[{i}] has no type")
            continue
        if kind not in PLUGIN_ROLES:
            errors.append(f"plugins[{i}]: unknown plugin type {kind!r}")
        if name in roles:
            errors.append(f"plugins[{i}]: duplicate plugin name {name!r}")
        roles[name] = PLUGIN_ROLES.get(kind, "unknown")
    errors += [
        f"{where} names no declared plugin ({name!r})"
        for where, name in _references(config) if name not in roles
    ]
    profiles = [p.get("name") for p in config.get("schedulingProfiles", [])]
    if not all(profiles) or len(set(profiles)) != len(profiles):
        errors.append(f"scheduling profiles need unique names: {profiles}")
    for profile in config.get("schedulingProfiles", []):
        for plugin in profile.get("plugins", []):
            ref, weight = plugin.get("pluginRef"), plugin.get("weight")
            if weight is None:
                continue
            if roles.get(ref) != "scorer":
                errors.append(f"{profile['name']}: weight on {ref!r}, which is not a scorer")
            elif not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
                errors.append(f"{profile['name']}: weight of {ref!r} must be a positive number")
    return errors
