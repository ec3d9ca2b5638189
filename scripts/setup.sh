#!/usr/bin/env bash
# Installs what building flint's CUDA kernels needs, without a system CUDA toolkit or a GPU:
#   1. a pinned nvcc 13.0 from PyPI into .toolchain/cuda (git-ignored, project-local);
#   2. libclang for bindgen (apt), when the system has none.
# Idempotent: a stamp file holding the pins makes a re-run a no-op.
#
# Why 13.0: our H100/H200 machines run driver 580 (CUDA 13.0), which cannot JIT PTX made
# by a newer nvcc. Raise the pins together with the driver, never alone.
#
# build.rs finds this toolchain on its own (after NVCC, CUDA_HOME and PATH); to use it by
# hand: export CUDA_HOME="$PWD/.toolchain/cuda/home".
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.toolchain/cuda"
home="$dest/home"

# Every wheel that nvcc needs to compile device code, at CUDA 13.0 update 2.
pins=(
    nvidia-cuda-nvcc==13.0.88     # nvcc, ptxas, nvlink, fatbinary, cudafe++
    nvidia-cuda-crt==13.0.88      # include/crt: headers nvcc force-includes
    nvidia-nvvm==13.0.88          # nvvm/bin/cicc, libdevice, libnvvm
    nvidia-cuda-runtime==13.0.96  # include/cuda_runtime.h, cuda_bf16.h, libcudadevrt
    nvidia-cuda-cccl==13.0.85     # include/cccl: cub, thrust, libcu++
)

log() { printf 'setup: %s\n' "$*"; }

install_nvcc() {
    local stamp="$dest/.stamp" want
    want="$(printf '%s\n' "${pins[@]}")"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$home/bin/nvcc" ]]; then
        log "nvcc already installed (stamp matches the pins)"
        return
    fi
    log "installing nvcc 13.0 from PyPI into $dest"
    # Install beside, then swap in: an interrupted run never leaves a half tree with a stamp.
    local tmp="$dest/pip.tmp"
    rm -rf "$tmp"
    mkdir -p "$dest"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        log "no pip for python3: installing python3-pip (apt)"
        apt_install python3-pip
    fi
    # --no-deps: the pins above are the complete, exact set. --target never touches the
    # system's packages, so a distro's externally-managed marker does not apply.
    PIP_ROOT_USER_ACTION=ignore PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install \
        --quiet --disable-pip-version-check --no-deps --no-compile --target "$tmp" "${pins[@]}"
    local cu="$tmp/nvidia/cu13"
    [[ -x "$cu/bin/nvcc" ]] || { echo "setup: no nvidia/cu13/bin/nvcc in the wheels" >&2; exit 1; }
    # The wheels lay out a CUDA_HOME already (bin, include, nvvm/{bin,libdevice}, lib); nvcc
    # finds cicc and the headers through bin/nvcc.profile. Two names a toolkit has are
    # missing: lib64 (libcudadevrt for `nvcc -dlink`) and nvvm/lib64/libnvvm.so (nvlink's
    # LTO). flint's build uses neither today; the links keep the tree a full CUDA_HOME.
    ln -sfn lib "$cu/lib64"
    mkdir -p "$cu/nvvm/lib64"
    ln -sfn ../../lib/libnvvm.so.4 "$cu/nvvm/lib64/libnvvm.so"
    rm -rf "$dest/pip" "$home"
    mv "$tmp" "$dest/pip"
    ln -sfn pip/nvidia/cu13 "$home"
    # Prove it compiles device code before stamping.
    local probe
    probe="$(mktemp -d)"
    printf '#include <cuda_bf16.h>\nextern "C" __global__ void probe(__nv_bfloat16 *x) { x[0] = __float2bfloat16(1.0f); }\n' \
        >"$probe/probe.cu"
    "$home/bin/nvcc" -cubin -arch=sm_80 -o "$probe/probe.cubin" "$probe/probe.cu"
    rm -rf "$probe"
    printf '%s\n' "$want" >"$stamp"
}

apt_updated=0
apt_install() {
    local sudo=()
    [[ "$(id -u)" == 0 ]] || sudo=(sudo)
    if [[ $apt_updated == 0 ]]; then
        "${sudo[@]}" apt-get update -qq
        apt_updated=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

has_libclang() {
    if [[ -n "${LIBCLANG_PATH:-}" ]] && compgen -G "$LIBCLANG_PATH/libclang*.so*" >/dev/null; then
        return 0
    fi
    # libclang.so / libclang-14.so.1, not libclang-cpp (the C++ API bindgen cannot use).
    ldconfig -p | grep -qE 'libclang(-[0-9.]+)?\.so' && return 0
    compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null
}

install_libclang() {
    if has_libclang; then
        log "libclang found"
        return
    fi
    log "installing libclang-dev for bindgen (apt)"
    apt_install libclang-dev
    has_libclang || { echo "setup: libclang still not found after installing libclang-dev" >&2; exit 1; }
}

install_nvcc
install_libclang
log "nvcc: $home/bin/nvcc"
"$home/bin/nvcc" --version | tail -n 2
