//! Running the pinned task iterators (adopt, usage). The kernel runs an iterator's program in
//! the context of the thread that reads it, which is how the programs find their request
//! (keyed by that thread's tid).
use std::io::Read as _;

use aya::programs::{
    iter::IterLink,
    links::{FdLink, PinnedLink},
};

use crate::{
    error::{Error, Result},
    paths::Paths,
};

/// Run the iterator whose link is pinned as `name` once; its output as records of type `T`.
pub fn run<T: aya::Pod>(paths: &Paths, name: &str) -> Result<Vec<T>> {
    let pin = paths.link_pin(name);
    let link = PinnedLink::from_pin(&pin)
        .map_err(|e| Error::bpf(format!("opening {}", pin.display()), e))?;
    let link: IterLink =
        FdLink::from(link).try_into().map_err(|e| Error::bpf(format!("iterator {name}"), e))?;
    let mut file =
        link.into_file().map_err(|e| Error::bpf(format!("starting iterator {name}"), e))?;
    // Large reads: each read of an iterator resumes its program, and read_to_end on an empty
    // vector starts at 32 bytes.
    let mut bytes = Vec::with_capacity(64 << 10);
    file.read_to_end(&mut bytes).map_err(|e| Error::io(format!("running iterator {name}"), e))?;
    Ok(bytes
        .chunks_exact(size_of::<T>())
        // SAFETY: `T` is Pod: any bytes of its size are a valid `T`; read_unaligned because
        // the buffer has no particular alignment.
        .map(|c| unsafe { c.as_ptr().cast::<T>().read_unaligned() })
        .collect())
}

/// The calling thread's id, under which an iterator finds its request.
pub fn current_tid() -> u32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::gettid() as u32 }
}
