#!/usr/bin/env bash
# Spark needs Java 17 (or newer). Install it from Debian when we are root; otherwise say how.
set -euo pipefail
java_major() { java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print v[1]; exit}'; }
if command -v java >/dev/null 2>&1 && [ "$(java_major)" -ge 17 ] 2>/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Java 17 not found: installing openjdk-17-jre-headless from Debian ..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  exit 0
fi
echo "Spark needs Java 17+: run 'sudo apt-get install -y openjdk-17-jre-headless' (or set JAVA_HOME) and retry." >&2
exit 1
