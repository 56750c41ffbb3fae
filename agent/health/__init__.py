"""Health side channels: supervisor and watchdog, resource guards, drift monitor."""
