#!/usr/bin/env bash
# Make a Debian bookworm root with Python 3.11 for the image's base, without any image registry:
#
#   packaging/podman/base.sh ROOT        # debootstrap into the empty directory ROOT, then trim it
#
# packaging/podman/local.sh runs it (and caches the result as a tar under /var/cache); the image
# built on it has the interpreter at /usr/bin/python3, where python:3.11-slim has
# /usr/local/bin/python3 (the venv is made and used on the same base, so either works).
#
# Trimmed as Debian's own slim images are: no documentation, man pages, locales or apt lists, and
# dpkg told to leave them out of any package installed later.
set -euo pipefail

root="${1:?usage: base.sh ROOT}"
suite="${BASE_SUITE:-bookworm}"
packages="python3,python3-venv,ca-certificates,tini"

# The mirror the host's apt uses (no other address is reachable from CI).
mirror() {
    local uri
    uri="$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
        2> /dev/null | grep -v security | head -n1 | awk '{print $2}')"
    echo "${uri:-http://deb.debian.org/debian}"
}

[ "$(id -u)" = 0 ] || { echo "base.sh: run as root (debootstrap)" >&2; exit 1; }
mkdir -p "$root"
[ -z "$(ls -A "$root")" ] || { echo "base.sh: $root is not empty" >&2; exit 1; }
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$(mirror)" > /dev/null

cat > "$root/etc/dpkg/dpkg.cfg.d/slim" << 'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
EOF
cat > "$root/etc/apt/apt.conf.d/slim" << 'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::GzipIndexes "true";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
# The sources the root was made from, for `apt-get install` in later stages.
echo "deb $(mirror) $suite main" > "$root/etc/apt/sources.list"

find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,info,groff,lintian,linda}/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache
# /dev comes from the container runtime.
rm -rf "${root:?}"/dev/*
