"""Configuration schema shared by the agent and the fleet controller.

One pydantic model per section, `extra="forbid"`, ranges on numbers, a description
on every field. The controller validates config updates with these same models.
"""

from agent.config.inference import (
    BackendConfig,
    ModelConfig,
    OnnxRuntimeBackendConfig,
    TrackerConfig,
)
from agent.config.ladder import LadderConfig, OverloadConfig
from agent.config.root import (
    SCHEMA_VERSION,
    AgentConfig,
    ConfigError,
    DeviceConfig,
    LoggingConfig,
    OutputsConfig,
    json_schema,
    load_config,
    parse_config,
)
from agent.config.rules import CountRuleConfig, LineRuleConfig, RuleConfig, ZoneRuleConfig
from agent.config.sources import (
    CameraConfig,
    FileSourceConfig,
    ReconnectConfig,
    RtspSourceConfig,
    SourceConfig,
    UsbSourceConfig,
)
from agent.config.tensorrt import TensorRTBackendConfig

__all__ = [
    "SCHEMA_VERSION",
    "AgentConfig",
    "BackendConfig",
    "CameraConfig",
    "ConfigError",
    "CountRuleConfig",
    "DeviceConfig",
    "FileSourceConfig",
    "LadderConfig",
    "LineRuleConfig",
    "LoggingConfig",
    "ModelConfig",
    "OnnxRuntimeBackendConfig",
    "OutputsConfig",
    "OverloadConfig",
    "ReconnectConfig",
    "RtspSourceConfig",
    "RuleConfig",
    "SourceConfig",
    "TensorRTBackendConfig",
    "TrackerConfig",
    "UsbSourceConfig",
    "ZoneRuleConfig",
    "json_schema",
    "load_config",
    "parse_config",
]
