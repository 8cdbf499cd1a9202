# tracker .rpm %postun. $1: 0 after an erase, 1 or more after an upgrade. As
# %systemd_postun_with_restart does: restart a running daemon on the new binary (whose
# %post has already loaded the new kernel programs).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart tracker.service >/dev/null 2>&1 || :
    fi
fi
exit 0
