#!/usr/bin/env bash
# Debian packages the test suite uses, installed only when missing:
#   python3-venv  to create the virtual environment (Debian splits it from python3)
#   mbpoll        an independent Modbus master, to read the simulators as a third party would
#   mosquitto     the MQTT broker the bollard and vehicle simulators publish to
#   mosquitto-clients  mosquitto_sub / mosquitto_pub, independent MQTT peers
#   socat         a pseudo-terminal pair: the serial line of the Modbus RTU tests
#   victoria-metrics  the time-series database of the historian tests (InfluxDB v2 write API on loopback)
#   curl          an independent HTTP client: the README's Open311/map/metrics examples are run with it
set -euo pipefail

need=()
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
command -v mbpoll >/dev/null || need+=(mbpoll)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null || need+=(mosquitto-clients)
command -v socat >/dev/null || need+=(socat)
command -v victoria-metrics >/dev/null || [ -x /usr/bin/victoria-metrics ] || need+=(victoria-metrics)
command -v curl >/dev/null || need+=(curl)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
  echo "missing Debian packages: ${need[*]} (run as root, or install them: apt-get install ${need[*]})" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
