#!/bin/sh
# Prints the Python to build the project's venv from: the first system Python
# of 3.11 or later that can make a venv, else whatever `python3` is on PATH.
# A system Python lives where every uid can reach it, which a node running
# runs under uids of their own needs (docs/isolation.md); pyenv's do not.
for candidate in /usr/bin/python3 /usr/local/bin/python3; do
    if [ -x "$candidate" ] && "$candidate" -c \
        'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "$candidate"
        exit 0
    fi
done
echo python3
