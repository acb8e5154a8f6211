# syntax=docker/dockerfile:1
#
# The worker node: the claude-code-scheduler wheel on a slim Python 3.13 runtime
# with the native Claude Code CLI binary. The runtime stage has no Node.js, no
# build tools and no caches.
#
#   docker build -t claude-code-scheduler .
#   docker run --rm -e CLAUDE_NODE_QUEUE_URL=... -e CLAUDE_NODE_TOPIC_ARN=... \
#       -e CLAUDE_NODE_LOG_BUCKET=... -e ANTHROPIC_API_KEY=... claude-code-scheduler

# The CLI version comes from claude-code.version, the pin the tests use too.
# --build-arg CLAUDE_CODE_VERSION=<version> overrides it, to try another one.
ARG CLAUDE_CODE_VERSION=

# Base images are pinned by the digest of their multi-platform index (one
# digest for amd64 and arm64), with the tag it was taken from beside it:
# a tag moves, a digest does not. Dependabot (.github/dependabot.yml) proposes
# new digests together with the tag.

# ---- wheel -------------------------------------------------------------------
# The package is pure Python, so it is built once on the build machine's own
# platform and the same wheel serves every target platform.
# python:3.13.15-slim-trixie
FROM --platform=$BUILDPLATFORM python:3.13-slim-trixie@sha256:9d2e5553305c7c7b0097999bb17187c69b921ccd6bc9d40e4bb5ebe652c00285 AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app/ app/
RUN pip wheel --no-deps --wheel-dir /dist/app .

# ---- claude-code -------------------------------------------------------------
# Node.js is needed only to install the CLI. The package's postinstall links
# the native binary for this platform (glibc x64 or arm64, from an optional
# dependency) over bin/claude.exe, and that one file is all the runtime needs.
# No --ignore-scripts or --omit=optional: either leaves the small JS stub there.
# node:22.23.3-bookworm-slim
FROM node:22-bookworm-slim@sha256:43ac6c60b8f89723f746e8a92ce91abd5017e627ce1ddfe4238355d3a30b772c AS claude-code
ARG CLAUDE_CODE_VERSION
# Set by BuildKit. A digest of one platform's image instead of the index would
# give an arm64 build an amd64 base (run under QEMU) and so the wrong native
# binary, with only a warning: the dpkg check makes that an error.
ARG TARGETARCH
WORKDIR /opt/claude-code
COPY claude-code.version ./
RUN test "$(dpkg --print-architecture)" = "$TARGETARCH" \
 && version="${CLAUDE_CODE_VERSION:-$(tr -d '[:space:]' < claude-code.version)}" \
 && npm install --no-audit --no-fund --loglevel=error "@anthropic-ai/claude-code@${version}" \
 && test "$(stat -c %s node_modules/@anthropic-ai/claude-code/bin/claude.exe)" -gt 1000000

# ---- runtime -----------------------------------------------------------------
# python:3.13.15-slim-trixie, the same image as the wheel stage's
FROM python:3.13-slim-trixie@sha256:9d2e5553305c7c7b0097999bb17187c69b921ccd6bc9d40e4bb5ebe652c00285 AS runtime
# The release workflow adds the label claude-code.version; `claude --version`
# in the image says it too.
LABEL org.opencontainers.image.title="claude-code-scheduler" \
      org.opencontainers.image.description="Worker node that runs Claude Code tasks from SQS and reports on an SNS control bus"

# DISABLE_AUTOUPDATER: the CLI otherwise rewrites its own install at run time.
# SHELL: the CLI's Bash tool looks for a POSIX shell there.
# TINI_SUBREAPER: on ECS with initProcessEnabled tini is not PID 1; as a
# subreaper it still reaps what outlives the node. (The node is a subreaper
# itself and kills and reaps what each run leaves behind.)
# CLAUDE_NODE_WORK_DIR: run directories, spooled logs and the state file the
# HEALTHCHECK reads; a volume, writable under a read-only root filesystem.
# Each run gets its own HOME inside its run directory (docs/isolation.md).
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    DISABLE_AUTOUPDATER=1 \
    SHELL=/bin/bash \
    TINI_SUBREAPER=1 \
    CLAUDE_NODE_WORK_DIR=/work

# bubblewrap and socat: the CLI's own Bash sandbox (--bash-sandbox) needs both;
# a few hundred KiB, so the option works wherever the host kernel allows it
# (ECS on EC2), with no image of its own.
# git, git-lfs, openssh-client and ca-certificates: what a task needs to work on
# code, and what the node clones a git workspace with (https and ssh remotes,
# LFS objects; docs/workspaces.md). No ripgrep: the native CLI embeds it (its
# Grep tool runs the CLI binary itself as `rg`) and uses it when none is on PATH.
# DL3008 (pin apt package versions) is ignored: a Debian release's archive keeps
# only the newest build of a package and binNMU suffixes differ between amd64
# and arm64, so an exact pin breaks the build; the base image tag fixes the
# release (trixie) and so the package line.
# The base image's architecture is the target's (see the claude-code stage).
ARG TARGETARCH
# hadolint ignore=DL3008
RUN test "$(dpkg --print-architecture)" = "$TARGETARCH" \
 && apt-get update \
 && apt-get install -y --no-install-recommends tini bubblewrap socat \
        git git-lfs openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# The run uids: the node (root) runs the run in slot i as uid and gid 10100 + i
# (--run-uid-base), 32 slots. Entries without a login shell or a home, so that
# tools that look their uid up (git, ssh) find a name. The work root is root's,
# mode 0711: a run passes through it to its own folder but cannot list it.
RUN for slot in $(seq 0 31); do \
        uid=$((10100 + slot)); \
        groupadd --gid "$uid" "claude-run-$slot" \
     && useradd --uid "$uid" --gid "$uid" --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "claude-run-$slot" || exit 1; \
    done \
 && install -d -o root -g root -m 0711 /work

COPY --from=claude-code /opt/claude-code/node_modules/@anthropic-ai/claude-code/bin/claude.exe \
     /usr/local/bin/claude

# Dependencies first, in their own layer that outlives changes to the code;
# then the application. requirements/runtime.txt pins every runtime dependency,
# transitive ones too, with the sha256 of each of its files on PyPI (uv pip
# compile, docs/development.md): --require-hashes refuses anything else, so a
# file replaced on the index or a dependency nobody locked (pip still resolves
# the dependencies, and each must be in the file) breaks the build instead of
# entering the image. --only-binary: the slim image has no compiler, and a
# wheel runs no code at install time. `pip check` then proves the locked set
# satisfies what the wheel's metadata (pyproject.toml) asks for.
RUN --mount=type=bind,source=requirements/runtime.txt,target=/tmp/runtime.txt \
    pip install --require-hashes --only-binary=:all: --requirement /tmp/runtime.txt
RUN --mount=type=bind,from=wheel,source=/dist/app,target=/tmp/app \
    pip install --no-deps /tmp/app/*.whl \
 && pip check

# The node runs as root inside the container, with the default capabilities
# (no CAP_SYS_PTRACE): the right to change uid is what lets it start each run
# under a uid of its own, and it keeps its credentials to itself (undumpable,
# no_new_privs for every run). DL3002 (last USER should not be root) is
# ignored for that reason: no run ever runs as root (docs/isolation.md).
# hadolint ignore=DL3002
USER 0:0
WORKDIR /work
# Everything the node and the CLI write: the work root (runs, their HOME and
# temporary files, the spooled logs, the state file) and /tmp. Declared here so
# that ECS bind mounts at these paths start with this ownership and mode, and
# `docker run --read-only` works.
VOLUME ["/work", "/tmp"]

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["claude-code-scheduler", "healthcheck"]

ENTRYPOINT ["tini", "--", "claude-code-scheduler"]
CMD ["node"]
