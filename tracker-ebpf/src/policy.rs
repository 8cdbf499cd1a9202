//! `cgroup_sock_addr` (connect and sendmsg, IPv4 and IPv6) on the instance's cgroup v2
//! directory: a slot with a network policy may reach only its allow-list; anything else fails
//! with EPERM in the job. The slot is the connecting task's tag.
use aya_ebpf::{
    bindings::bpf_sock_addr, macros::cgroup_sock_addr, maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use tracker_common::{AllowPorts, NET_ALLOWLIST, Net4, Net6};

use crate::{
    kernel::current_tid,
    maps::{ALLOW4, ALLOW6, NET_POLICY},
    slot,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn trk_connect4(ctx: SockAddrContext) -> i32 {
    check(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn trk_connect6(ctx: SockAddrContext) -> i32 {
    check(&ctx, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn trk_sendmsg4(ctx: SockAddrContext) -> i32 {
    check(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn trk_sendmsg6(ctx: SockAddrContext) -> i32 {
    check(&ctx, true)
}

#[inline(always)]
fn check(ctx: &SockAddrContext, v6: bool) -> i32 {
    let Some(slot) = slot::current_slot(current_tid()) else { return ALLOW };
    // SAFETY: the value is copied out at once.
    let restricted = unsafe { NET_POLICY.get(&slot) }.is_some_and(|p| p.mode == NET_ALLOWLIST);
    if !restricted {
        return ALLOW;
    }
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the context the kernel passes; fields read whole, as the verifier wants.
    let (port, rule) = unsafe {
        let port = u16::from_be((*sa).user_port as u16);
        let rule: Option<&AllowPorts> = if v6 {
            let w = [(*sa).user_ip6[0], (*sa).user_ip6[1], (*sa).user_ip6[2], (*sa).user_ip6[3]];
            let mut addr = [0u8; 16];
            for (i, word) in w.iter().enumerate() {
                addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            }
            ALLOW6.get(&Key::new(32 + 128, Net6 { slot, addr }))
        } else {
            let addr = (*sa).user_ip4.to_ne_bytes();
            ALLOW4.get(&Key::new(32 + 32, Net4 { slot, addr }))
        };
        (port, rule.copied())
    };
    match rule {
        Some(r) if r.allows(port) => ALLOW,
        _ => DENY,
    }
}
