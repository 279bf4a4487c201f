#!/usr/bin/env bash
# CI: the runtime tests again in the renderers' own environments: Python 3.8 + torch 1.12.1, and Python 3.7 +
# torch 1.12.1 + numpy 1.21, each a fresh venv with a regular `pip install` of this repository.
# A Python that is not on the machine is skipped with a message (never silently); any failing environment
# fails the step. The se4lip-extract of the calling environment (the modern one .ci/run set up) stands for
# "the package in its own environment" in test_renderer_environment_without_the_package.
# Usage: bash .ci/old_pythons.sh [REPO]   (VENVS=folder for the venvs, default /tmp/se4lip-ci-venvs)
set -euo pipefail
REPO=$(cd "${1:-$(dirname "$0")/..}" && pwd)
VENVS=${VENVS:-/tmp/se4lip-ci-venvs}
# extraction, golden features (within 1e-4 of the committed ones), weights, CLI, streaming, adapters + fixtures
RUNTIME_TESTS="tests/test_audio.py tests/test_extract.py tests/test_weights.py tests/test_cli.py tests/test_stream.py
               tests/test_atomic.py tests/test_fast_paths.py tests/test_adapters.py tests/test_adapters_more.py
               tests/test_live.py"
export SE4LIP_TEST_EXTRACT=${SE4LIP_TEST_EXTRACT:-$(command -v se4lip-extract || true)}
if [ -z "$SE4LIP_TEST_EXTRACT" ]; then
    echo "note: no se4lip-extract on PATH; the renderer-environment test uses each venv's own"
fi
declare -A EXTRA=([3.7]="numpy==1.21.*" [3.8]="")  # 3.7: the renderers' numpy line (pip would pick 1.21.6 anyway)
mkdir -p "$VENVS"
status=0
total=$SECONDS
for py in 3.8 3.7; do
    interp=$(command -v "python$py" || true)
    if [ -n "$interp" ] && ! "$interp" -c "" 2> /dev/null; then interp=""; fi  # e.g. a pyenv shim of nothing
    if [ -z "$interp" ] && command -v pyenv > /dev/null; then  # pyenv keeps versions outside PATH
        interp=$(ls -d "$(pyenv root)"/versions/"$py".*/bin/python 2> /dev/null | sort -V | tail -n 1 || true)
    fi
    if [ -z "$interp" ]; then
        echo "SKIPPED Python $py: no python$py interpreter on this machine (install it, e.g. pyenv install $py)"
        continue
    fi
    venv="$VENVS/py${py/./}"
    rm -rf "$venv"
    start=$SECONDS
    "$interp" -m venv "$venv"
    # torch is never pinned by the package: install the renderers' version first, as their READMEs do.
    # --prefer-binary: one 3.7 run here tried to build safetensors 0.5.3 from source (Rust, crates.io) despite
    # setup.cfg's `safetensors<0.5` marker; the markers pick versions with wheels, and those must win.
    pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check --prefer-binary)
    "${pip[@]}" torch==1.12.1 ${EXTRA[$py]}
    # A regular install resolves the dependencies with setup.cfg's markers (wheels only on 3.7/3.8).
    "${pip[@]}" "$REPO" pytest
    echo "Python $py: $("$venv/bin/python" -c 'import platform, torch, numpy; print(platform.python_version(),
        "torch", torch.__version__, "numpy", numpy.__version__)') (installed in $((SECONDS - start)) s)"
    # bin/pytest, not python -m pytest: the checkout's se4lip_features (without adapters/ and pretrained/,
    # which install inside it) must not shadow the installed package. PATH: test_cli runs the console script.
    if ! (cd "$REPO" && PATH="$venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
          "$venv/bin/pytest" -q -rs -p no:cacheprovider $RUNTIME_TESTS); then
        echo "FAILED Python $py"
        status=1
    fi
    echo "Python $py: done in $((SECONDS - start)) s"
done
echo "old Pythons: $((SECONDS - total)) s in all"
exit $status
