//! `cgroup_skb` ingress and egress on the instance's cgroup v2 directory, which every slot's
//! cgroup is under: each packet of a slot's sockets is counted to the slot that the socket's
//! cgroup belongs to. (A socket keeps the cgroup it was created in.)
use aya_ebpf::{
    helpers::generated::bpf_skb_cgroup_id, macros::cgroup_skb, programs::SkBuffContext,
};

use crate::{kernel::is_active, maps::CGROUP_SLOTS, slot};

/// Let the packet through: we count, never filter.
const PASS: i32 = 1;

#[cgroup_skb(ingress)]
pub fn trk_net_ingress(ctx: SkBuffContext) -> i32 {
    count(&ctx, true);
    PASS
}

#[cgroup_skb(egress)]
pub fn trk_net_egress(ctx: SkBuffContext) -> i32 {
    count(&ctx, false);
    PASS
}

#[inline(always)]
fn count(ctx: &SkBuffContext, ingress: bool) {
    if !is_active() {
        return;
    }
    // SAFETY: a helper on the program's own skb.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    // SAFETY: the value is copied out at once.
    let Some(slot) = (unsafe { CGROUP_SLOTS.get(&cgroup) }).copied() else {
        return;
    };
    let len = u64::from(ctx.len());
    slot::with_counters(slot, |c| {
        if ingress {
            c.counts.net_rx_bytes += len;
            c.counts.net_rx_packets += 1;
        } else {
            c.counts.net_tx_bytes += len;
            c.counts.net_tx_packets += 1;
        }
    });
}
