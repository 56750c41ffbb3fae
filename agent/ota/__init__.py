"""Over-the-air updates of models and configs (docs/ota.md).

desired (MQTT) -> signed manifest (manifest.py) -> download (download.py) -> staging
(staging.py) -> validation (validate.py) -> activation -> probation (probation.py)
-> committed, driven by the persisted state machine (state.py) on the `ota` thread
(updater.py). Importing this package loads nothing heavy: `fleet.signing` imports
`agent.ota.manifest`.
"""
