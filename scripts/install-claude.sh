#!/usr/bin/env bash
# Installs the Claude Code CLI at the version pinned in claude-code.version
# into .cache/claude-code/<version>/ and prints the path of its `claude` binary.
#
# Idempotent: does nothing but print the path when that binary is already there.
# Do not add --ignore-scripts or --omit=optional: the package's postinstall links
# the native binary in from a platform package (an optional dependency).
#
# Environment: CLAUDE_CODE_VERSION overrides the pinned version (for trying one
# out); CLAUDE_CODE_CACHE overrides the cache folder (default <repo>/.cache/claude-code).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${CLAUDE_CODE_VERSION:-$(tr -d '[:space:]' < "$repo/claude-code.version")}"
if [[ -z "$version" ]]; then
    echo "install-claude: $repo/claude-code.version is empty" >&2
    exit 2
fi
cache="${CLAUDE_CODE_CACHE:-$repo/.cache/claude-code}"
prefix="$cache/$version"
bin="$prefix/node_modules/.bin/claude"

installed() {
    [[ -x "$bin" ]] && DISABLE_AUTOUPDATER=1 "$bin" --version 2>/dev/null | grep -qF "$version"
}

if ! installed; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "install-claude: npm is not on PATH; cannot install @anthropic-ai/claude-code@$version" >&2
        exit 1
    fi
    echo "install-claude: installing @anthropic-ai/claude-code@$version into $prefix" >&2
    # Install into a scratch folder and move it into place, so an interrupted
    # install never leaves a half-populated prefix that looks installed.
    mkdir -p "$cache"
    scratch="$(mktemp -d "$cache/.install-$version-XXXXXX")"
    trap 'rm -rf "$scratch"' EXIT
    chmod 755 "$scratch"  # mktemp makes it 0700; tests run the CLI as an unprivileged user too
    npm install --prefix "$scratch" --no-audit --no-fund --no-save --loglevel=error \
        "@anthropic-ai/claude-code@$version" >&2
    rm -rf "$prefix"
    mv "$scratch" "$prefix"
    trap - EXIT
    if ! installed; then
        echo "install-claude: installed, but $bin does not report version $version" >&2
        exit 1
    fi
fi
echo "$bin"
