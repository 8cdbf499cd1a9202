//! One ListSlots call on the daemon's socket (the first argument), by whatever process runs
//! this (a job, in the security tests): prints `ok N` (N slots) or `denied CODE: MESSAGE`.
use tracker::daemon::proto::{ListSlotsRequest, tracker_client::TrackerClient};

fn main() {
    let Some(socket) = std::env::args_os().nth(1) else {
        eprintln!("usage: grpc_probe SOCKET");
        std::process::exit(2);
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        eprintln!("grpc_probe: no runtime");
        std::process::exit(2);
    };
    let channel = rt.block_on(tracker_tests::daemon::connect(std::path::Path::new(&socket)));
    match rt.block_on(TrackerClient::new(channel).list_slots(ListSlotsRequest {})) {
        Ok(r) => println!("ok {}", r.into_inner().slots.len()),
        Err(e) => println!("denied {:?}: {}", e.code(), e.message()),
    }
}
