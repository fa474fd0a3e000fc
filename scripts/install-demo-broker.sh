#!/usr/bin/env bash
# `make demo`: install Mosquitto (the broker of the bollards and vehicles) as `make test`
# does, when that is possible without asking anything: as root, or with sudo that needs no
# password, on a machine with apt-get. Never prompts and never fails: without Mosquitto the
# demo starts its embedded pure-Python broker instead (city_scada/demo_broker.py).
set -uo pipefail

command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "Mosquitto is not installed (no apt-get here): the demo embeds a pure-Python MQTT broker"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=(sudo -n)
else
  echo "Mosquitto is not installed (needs root: apt-get install mosquitto): the demo embeds a pure-Python MQTT broker"
  exit 0
fi
echo "installing Mosquitto (Debian package mosquitto) for the demo's bollards and vehicles"
export DEBIAN_FRONTEND=noninteractive
# No terminal input and a time limit: a slow or unreachable mirror must not hold the demo up.
if ! { timeout 300 "${SUDO[@]}" apt-get update -qq </dev/null &&
       timeout 300 "${SUDO[@]}" apt-get install -y -qq --no-install-recommends mosquitto </dev/null >/dev/null; }; then
  echo "could not install Mosquitto: the demo embeds a pure-Python MQTT broker"
fi
exit 0
