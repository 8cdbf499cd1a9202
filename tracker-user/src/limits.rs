//! Limits a slot can carry. They are enforced by the slot's cgroups.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// At most this many live tasks (threads included): `pids.max`. A fork beyond it fails
    /// with EAGAIN in the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_max: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}
