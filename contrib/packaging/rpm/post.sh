# tracker .rpm %post. $1: 1 on a first install, 2 or more on an upgrade (the new files are
# in place). As %systemd_post does: the unit follows the system's preset on a first install.
if [ "$1" -gt 1 ]; then
    /usr/libexec/tracker/package-hook upgraded
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload preset tracker.service >/dev/null 2>&1 || :
fi
exit 0
