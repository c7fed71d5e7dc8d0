#!/usr/bin/env bash
# Set up everything dicom-relay needs on a Debian machine: the Debian packages it lacks, a virtualenv with the
# pinned requirements, and the dicom_relay library installed (editable) into it. Safe to run again: it only
# does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v /usr/sbin/Orthanc >/dev/null 2>&1 || missing+=(orthanc)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
# The pixel tests: the tesseract program as an OCR independent of the product's, and the fonts of the corpus.
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
[ -d /usr/share/fonts/truetype/liberation ] || missing+=(fonts-liberation)
[ -d /usr/share/fonts/truetype/freefont ] || missing+=(fonts-freefont-ttf)
command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
# gcc + libc headers build the local stack's loopback_bind.so (Orthanc 1.10 cannot choose its listening address).
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
[ -e /usr/include/netinet/in.h ] || missing+=(libc6-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# The browser test (tests/e2e/test_operator_view.py) drives headless Chromium over the DevTools protocol.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fc-list 2>/dev/null | grep -qi dejavu || missing+=(fonts-dejavu-core)
# Tesseract's English model for reading burned-in text (tesserocr brings the engine, not the model).
ls /usr/share/tesseract-ocr/*/tessdata/eng.traineddata >/dev/null 2>&1 || missing+=(tesseract-ocr tesseract-ocr-eng)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt requirements-test.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing Python requirements into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt -r requirements-test.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
