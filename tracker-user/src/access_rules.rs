//! A slot's network and device access rules (its limits `network` and `deny_devices`), written into the maps the `cgroup_sock_addr` and
//! `cgroup_device` programs read.
use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{HashMap, LpmTrie, MapData, lpm_trie::Key};
use tracker_common::{
    ANY_MINOR, AllowPorts, DeviceKey, MAX_PORTS_PER_NET, NET_ALLOWLIST, Net4, Net6, NetPolicy,
    map_name,
};

use crate::{
    error::{Error, Result},
    limits::Limits,
    maps::open_map,
    paths::Paths,
};

/// The policy maps of a loaded tracker.
pub struct AccessMaps {
    net: HashMap<MapData, u32, NetPolicy>,
    allow4: LpmTrie<MapData, Net4, AllowPorts>,
    allow6: LpmTrie<MapData, Net6, AllowPorts>,
    devices: HashMap<MapData, DeviceKey, u32>,
}

/// Refuse a network or device limit that nothing would enforce: the programs attach to the
/// instance's cgroup v2 directory, so the slot needs a cgroup2 directory and the programs
/// must be attached.
pub fn check_enforceable(paths: &Paths, limits: &Limits, has_cgroup2: bool) -> Result<()> {
    let wanted = [
        (limits.network.is_some(), "deny-network/allow-connect", "trk_connect4"),
        (!limits.deny_devices.is_empty(), "deny-device", "trk_device"),
    ];
    for (asked, limit, program) in wanted {
        if !asked {
            continue;
        }
        if !has_cgroup2 {
            return Err(Error::LimitUnavailable {
                limit,
                missing: "a cgroup2 hierarchy for the slot (its programs attach to cgroup2)",
            });
        }
        if !paths.link_pin(program).exists() {
            return Err(Error::LimitUnavailable {
                limit,
                missing: "its program is not attached (see `tracker status`)",
            });
        }
    }
    Ok(())
}

impl AccessMaps {
    pub fn open(paths: &Paths) -> Result<Self> {
        let m = |e| Error::bpf("a policy map", e);
        Ok(Self {
            net: open_map(paths, map_name::NET_POLICY)?.try_into().map_err(m)?,
            allow4: open_map(paths, map_name::ALLOW4)?.try_into().map_err(m)?,
            allow6: open_map(paths, map_name::ALLOW6)?.try_into().map_err(m)?,
            devices: open_map(paths, map_name::DENY_DEV)?.try_into().map_err(m)?,
        })
    }

    /// Make the maps say what `limits` says for `slot` (and nothing else).
    pub fn apply(&mut self, slot: u32, limits: &Limits) -> Result<()> {
        // Refuse what the maps cannot hold before changing anything.
        let nets = group_ports(limits)?;
        self.clear(slot)?;
        let failed = |e| Error::bpf("writing the slot's policy", e);
        for ((addr, prefix), ports) in nets {
            let v = AllowPorts::new(&ports);
            match addr {
                IpAddr::V4(a) => self
                    .allow4
                    .insert(
                        &Key::new(32 + u32::from(prefix), Net4 { slot, addr: a.octets() }),
                        v,
                        0,
                    )
                    .map_err(failed)?,
                IpAddr::V6(a) => self
                    .allow6
                    .insert(
                        &Key::new(32 + u32::from(prefix), Net6 { slot, addr: a.octets() }),
                        v,
                        0,
                    )
                    .map_err(failed)?,
            }
        }
        for d in &limits.deny_devices {
            let key = DeviceKey { slot, major: d.major, minor: d.minor.unwrap_or(ANY_MINOR) };
            self.devices.insert(key, 1, 0).map_err(failed)?;
        }
        // The switch last: the allow-list is complete before it is enforced.
        if limits.network.is_some() {
            self.net.insert(slot, NetPolicy { mode: NET_ALLOWLIST }, 0).map_err(failed)?;
        }
        Ok(())
    }

    /// Forget everything about `slot`.
    pub fn clear(&mut self, slot: u32) -> Result<()> {
        let _ = self.net.remove(&slot);
        let k4: Vec<Key<Net4>> =
            self.allow4.keys().filter_map(|k| k.ok()).filter(|k| k.data().slot == slot).collect();
        for k in k4 {
            let _ = self.allow4.remove(&k);
        }
        let k6: Vec<Key<Net6>> =
            self.allow6.keys().filter_map(|k| k.ok()).filter(|k| k.data().slot == slot).collect();
        for k in k6 {
            let _ = self.allow6.remove(&k);
        }
        let kd: Vec<DeviceKey> =
            self.devices.keys().filter_map(|k| k.ok()).filter(|k| k.slot == slot).collect();
        for k in kd {
            let _ = self.devices.remove(&k);
        }
        Ok(())
    }
}

/// The allow-list as one entry per network with its ports (0: any).
fn group_ports(limits: &Limits) -> Result<BTreeMap<(IpAddr, u8), Vec<u16>>> {
    let mut nets: BTreeMap<(IpAddr, u8), Vec<u16>> = BTreeMap::new();
    for r in limits.network.iter().flatten() {
        let ports = nets.entry((r.addr, r.prefix)).or_default();
        if !ports.contains(&r.port) {
            ports.push(r.port);
        }
        if ports.len() > MAX_PORTS_PER_NET {
            return Err(Error::InvalidLimit(format!(
                "more than {MAX_PORTS_PER_NET} ports for {}/{}: allow the whole network or split it",
                r.addr, r.prefix
            )));
        }
    }
    Ok(nets)
}
