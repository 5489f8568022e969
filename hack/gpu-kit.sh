#!/usr/bin/env bash
# The GPU kit's vLLM, for a GPU machine that has Python 3.12 and torch 2.11 (CUDA 13) but no vLLM
# and no network (the lent machine, docs/performance.md): `hack/gpu-kit.sh [CHECKOUT]`.
#
# vLLM 0.26.0 is the newest whose wheel pins torch 2.11.0. It and the packages it imports at start
# (an import sweep of 530 of its modules needed exactly these; compressed-tensors and loguru for any
# quantized model) are installed with `pip --target` for cp312, then slimmed for a dense Llama on
# an sm_90 card (H100, H200): no FlashAttention 2 (FlashAttention 3 serves sm_90), no MoE kernels,
# no Blackwell attention, no Rust front end, no other Python's deep_gemm, and inside the kernel
# libraries only the code an sm_90 can run (bench/gpu/fatbin.py). The result is one xz tarball,
# cached in $LORAPLANE_HOME/gpu-kit/ and keyed by this script and the pruner; a copy is put in
# CHECKOUT/.gpu-kit/ (ignored through .git/info/exclude) for a run to carry. Never run by make test.
#
# On the GPU machine: `python3 -m bench.gpu --repack .gpu-kit/vllm-0.26.0-sm90.tar.xz`.
set -euo pipefail
checkout=$(cd "${1:-$(dirname "$0")/..}" && pwd)
home=${LORAPLANE_HOME:-$HOME/.cache/loraplane}
kit=$home/gpu-kit
python=${PYTHON:-python3}
VLLM_VERSION=0.26.0
ARCH=90
PACKAGES=(
  "vllm==$VLLM_VERSION" fastapi==0.136.3 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.4
  pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 openai==3.57.0
  httpx2==2.16.2 httpcore2==2.16.2 jiter==0.19.0 sniffio==1.3.1 truststore==0.10.5
  openai-harmony==0.0.8 msgspec==0.23.0 pyzmq==27.3.0 cbor2==6.3.0 cachetools==8.0.2
  pybase64==1.5.1 partial-json-parser==0.2.1.1.post7 prometheus-fastapi-instrumentator==8.1.0
  model-hosting-container-standards==0.1.16 jmespath==1.1.0 supervisor==4.3.0 watchfiles==1.3.0
  blake3==1.0.11 setproctitle==1.3.8 depyf==0.20.0 astor==0.8.1 dill==0.4.1
  python-json-logger==4.2.0 ijson==3.6.0 python-multipart==0.0.34 llguidance==1.7.6
  xgrammar==0.2.7 apache-tvm-ffi==0.1.10 compressed-tensors==0.17.0 loguru==0.8.0
)
# What a dense Llama on sm_90 never loads (paths under the install).
DROP=(
  bin vllm/vllm-rs vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/_moe_C_stable_libtorch.abi3.so
  vllm/third_party/fmha_sm100 vllm/entrypoints/serve/instrumentator/static
)
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp)
for tag in 2_17 2014 2_24 2_26 2_27 2_28 2_31 2_34; do
  [[ $tag == 2014 ]] && TARGET+=(--platform manylinux2014_x86_64) && continue
  TARGET+=(--platform "manylinux_${tag}_x86_64")
done

key=$(cat "$0" "$checkout/bench/gpu/fatbin.py" | sha256sum | cut -c1-12)
tarball=$kit/vllm-$VLLM_VERSION-sm$ARCH.tar.xz
mkdir -p "$kit/wheels"
if [[ ! -f $tarball || $(cat "$kit/.key" 2>/dev/null) != "$key" ]]; then
  echo "[gpu-kit] downloading ${#PACKAGES[@]} wheels into $kit/wheels (cached)" >&2
  python3 -m pip download -q --no-deps "${TARGET[@]}" -d "$kit/wheels" "${PACKAGES[@]}"
  wheels=()
  for spec in "${PACKAGES[@]}"; do
    name=${spec%%==*} version=${spec#*==}
    file=$(ls "$kit/wheels/${name//-/_}-$version-"*.whl 2>/dev/null | head -n1)
    [[ -n $file ]] || { echo "[gpu-kit] no wheel for $spec in $kit/wheels" >&2; exit 1; }
    wheels+=("$file")
  done
  rm -rf "$kit/site" "$kit/site.tmp"
  python3 -m pip install -q --no-deps --no-compile "${TARGET[@]}" --target "$kit/site.tmp" "${wheels[@]}"
  for path in "${DROP[@]}"; do rm -rf "${kit:?}/site.tmp/$path"; done
  find "$kit/site.tmp/vllm/third_party/deep_gemm" -name '_C.cpython-*.so' ! -name '*-312-*' -delete
  (cd "$checkout" && "$python" -m bench.gpu.fatbin --arch "$ARCH" "$kit"/site.tmp/vllm/*.so)
  mv "$kit/site.tmp" "$kit/site"
  echo "[gpu-kit] packing $(du -sh "$kit/site" | cut -f1) with xz -9e (minutes on 2 cores)" >&2
  tar -C "$kit/site" --sort=name --owner=0 --group=0 --mtime=@0 -cf - . \
    | xz -9e -T2 >"$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
  echo "$key" >"$kit/.key"
fi
mkdir -p "$checkout/.gpu-kit"
cp "$tarball" "$checkout/.gpu-kit/"
exclude=$(git -C "$checkout" rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF /.gpu-kit/ "$exclude" 2>/dev/null || echo /.gpu-kit/ >>"$exclude"
echo "[gpu-kit] $(du -h "$tarball" | cut -f1) $checkout/.gpu-kit/$(basename "$tarball")"
