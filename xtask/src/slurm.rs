//! What the Slurm integration test (tests/tests/slurm.rs) needs: Debian's Slurm daemons
//! (slurmdbd and MariaDB too, for sacct) and client, munge, and the SPANK header the plugin is
//! built against. Installed with apt-get
//! where missing; one line says what was found or done.
use std::path::Path;

use crate::run::apt_install;

/// Each package, and a file it installs that tells whether it is there.
const PACKAGES: &[(&str, &str)] = &[
    ("slurmctld", "/usr/sbin/slurmctld"),
    ("slurmd", "/usr/sbin/slurmd"),
    // sacct's database: slurmdbd in front of a MariaDB the test starts for itself.
    ("slurmdbd", "/usr/sbin/slurmdbd"),
    ("mariadb-server", "/usr/sbin/mariadbd"),
    ("slurm-client", "/usr/bin/srun"),
    ("munge", "/usr/sbin/munged"),
    ("libslurm-dev", "/usr/include/slurm/spank.h"),
];

/// Install what is missing. Not fatal: without Slurm the test skips, and under CI, where a
/// skip fails, the test says what is missing.
pub fn ensure_packages() {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        println!("xtask: Slurm (for the Slurm test): found");
        return;
    }
    match apt_install(&missing) {
        Ok(()) => println!("xtask: Slurm (for the Slurm test): installed {}", missing.join(" ")),
        Err(e) => println!(
            "xtask: Slurm (for the Slurm test): cannot install {} ({}); the Slurm test will skip (fail under CI)",
            missing.join(" "),
            e.to_string().lines().next().unwrap_or_default()
        ),
    }
}
