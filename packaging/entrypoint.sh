#!/bin/sh
# Container entrypoint. `IMAGE` alone runs `edge serve`; `IMAGE --flag ...` passes the flags to
# `edge serve`; `IMAGE publish ...` (any edge subcommand) runs `edge publish ...`; any other
# command on the PATH (sh, python) runs as it is.
set -eu

if [ "$#" -eq 0 ]; then
    set -- serve
elif [ "${1#-}" != "$1" ]; then
    set -- serve "$@"
fi
if command -v "$1" > /dev/null 2>&1; then
    exec "$@"
fi

if [ "$1" = serve ]; then
    persist="${PERSIST_DIR:-/persist}"
    if [ ! -d "$persist" ] || [ ! -w "$persist" ]; then
        {
            echo "edge: the persist directory $persist is not writable by uid $(id -u) gid $(id -g)."
            echo "  It holds the pipeline cache, the inference log buffer and the edge's credentials."
            echo "  Use a named volume (-v edge-data:$persist), or make a bind-mounted directory"
            echo "  writable for the container user: sudo chown -R 10001:0 ./data"
            echo "  (or keep it root's with group write: sudo chmod 0770 ./data)"
        } >&2
        exit 78
    fi
fi
exec edge "$@"
