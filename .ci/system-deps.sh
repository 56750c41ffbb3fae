#!/usr/bin/env bash
# Debian packages the tests use: Mosquitto (real broker), GStreamer's RTSP server
# (a real RTSP camera), shellcheck, systemd-analyze, Chromium (dashboard tests),
# openssl. Skips apt when all are present.
set -euo pipefail

need=()
command -v mosquitto >/dev/null || need+=(mosquitto mosquitto-clients)
/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0")' 2>/dev/null \
  || need+=(gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base
            gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v chromium >/dev/null || need+=(chromium)   # the dashboard's browser tests
command -v openssl >/dev/null || need+=(openssl)

if [ ${#need[@]} -eq 0 ]; then
  echo "system-deps: all present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "system-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
