# tracker .rpm %preun. $1: 0 when the package is being erased, 1 or more on an upgrade.
# On erase, as %systemd_preun does, stop and disable the unit; then unload the programs so
# that no pin is left (refused while a slot has live tasks: the erase then fails).
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl --no-reload disable --now tracker.service >/dev/null 2>&1 || :
    elif command -v systemctl >/dev/null 2>&1; then
        systemctl --no-reload disable tracker.service >/dev/null 2>&1 || :
    fi
    /usr/libexec/tracker/package-hook removing || exit 1
fi
exit 0
