//! Reaching a slot's tagged tasks from user space: a signal goes through a pidfd that is
//! checked against the kernel tag after it was opened, so a reused pid is never hit and a
//! process that is not the slot's is never signalled. Kill and signal both go through here.
use std::collections::BTreeSet;

use tracker_common::TaskTag;

use super::instance::Instance;
use crate::pidfd;

/// Send `sig` once to each process of `tags` (tasks of slot `slot`), through a pidfd verified
/// against its tag. Returns the processes (tgids) that got it.
pub(super) fn signal(t: &Instance, tags: &[(u32, TaskTag)], slot: u32, sig: i32) -> BTreeSet<u32> {
    let mut done = BTreeSet::new();
    for (tid, tag) in tags {
        if done.contains(&tag.tgid) {
            continue;
        }
        let Ok(fd) = pidfd::open_task(*tid, tag.tgid) else {
            continue;
        };
        // The tag is removed at exit, before the pid can be reused: if it is still there
        // now, after the pidfd was opened, the pidfd is on the tagged task.
        let same = t.maps().tag(*tid).ok().flatten();
        if same.is_some_and(|t| t.slot == slot && t.start_ns == tag.start_ns)
            && pidfd::send_signal(&fd, sig).is_ok()
        {
            done.insert(tag.tgid);
        }
    }
    done
}
