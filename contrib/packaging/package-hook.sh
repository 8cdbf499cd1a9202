#!/bin/sh
# What tracker's packages do to the kernel side when they are upgraded and removed. The .deb's
# maintainer scripts and the .rpm's scriptlets both call this (installed as
# /usr/libexec/tracker/package-hook), so that the two packages behave the same and the .deb's
# install-and-remove test (tests/tests/package.rs) exercises the .rpm's logic too. Starting,
# stopping and enabling the unit is left to each format's own conventions (debhelper's
# snippets in the .deb, systemctl in the .rpm's scriptlets).
#
#   upgraded   the new files are in place: if the programs are loaded, load them again from
#              the new binary (`tracker load` upgrades them in place and keeps every slot),
#              so that the binary and the programs in the kernel are the same version.
#   removing   the files are still there, the unit is stopped: unload the programs, so that
#              no pin is left. Refused (non-zero, and the removal fails) while a slot has
#              live tasks: removing the package must not leave running jobs tracked by
#              nothing. Kill them (`tracker kill SLOT`) or `tracker unload --force` first.
#
# The instance is the default one, or $TRACKER_INSTANCE in the package manager's environment.
# Needs no systemd.
set -u
tracker=/usr/bin/tracker

say() { echo "tracker: $*" >&2; }

loaded() {
    "$tracker" status --json 2>/dev/null | grep -q '"loaded": *true'
}

case "${1:-}" in
upgraded)
    if loaded; then
        if "$tracker" load >/dev/null; then
            say "the kernel programs were upgraded in place; every slot was kept"
        else
            # The new binary still works with the old programs' maps, which it keeps.
            say "warning: the kernel programs were not upgraded: run \`tracker load\`"
        fi
    fi
    ;;
removing)
    if ! "$tracker" unload; then
        say "not removed: slots still have live tasks (\`tracker slots\`): kill them" \
            "(\`tracker kill SLOT\`) or run \`tracker unload --force\`, then remove the package again"
        exit 1
    fi
    ;;
*)
    echo "usage: $0 upgraded|removing" >&2
    exit 2
    ;;
esac
exit 0
