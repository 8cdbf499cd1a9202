//! One function per command: parse nothing, decide nothing, call the library, print.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tracker::{
    KillOptions, LoadOptions, Paths, RunOptions, SlotSpec, Tracker, generated_slot_name, loader,
    safe_open::{self, open_for_job},
    status,
};

use crate::{
    cli::{Cli, Command},
    docs, output,
};

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        // From the CLI definition alone: a bad $TRACKER_INSTANCE must not stop them.
        Command::Docs(d) => docs::run(d),
        command => with_instance(cli.instance.as_deref(), command),
    }
}

fn with_instance(instance: Option<&str>, command: Command) -> Result<ExitCode> {
    let paths = match instance {
        Some(name) => Paths::new(name)?,
        None => Paths::from_env()?,
    };
    match command {
        Command::Docs(d) => docs::run(d),
        Command::Load { max_slots, cgroup_parent, json } => {
            load(&paths, max_slots, cgroup_parent, json)
        }
        Command::Status { json } => {
            output::status(&status::status(&paths)?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Unload { force } => {
            let r = loader::unload(&paths, force)?;
            output::unload(&paths, &r);
            Ok(ExitCode::SUCCESS)
        }
        Command::Create { slot, limits, owner, exist_ok, cgroup } => {
            let t = Tracker::open(paths)?;
            let spec = SlotSpec {
                name: slot,
                owner_uid: owner.unwrap_or_else(caller_uid),
                limits: limits.to_limits()?,
                cgroup,
            };
            match t.create_slot(&spec) {
                Ok((rec, warnings)) => {
                    output::warnings(&warnings);
                    println!("{}", rec.name);
                }
                Err(tracker::Error::SlotExists(name)) if exist_ok => println!("{name}"),
                Err(e) => return Err(e.into()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            slot,
            detach,
            output: output_file,
            keep,
            kill_timeout,
            summary,
            limits,
            isolation,
            cgroup,
            command,
        } => {
            let t = Tracker::open(paths)?;
            let spec = SlotSpec {
                name: slot.unwrap_or_else(generated_slot_name),
                owner_uid: caller_uid(),
                limits: limits.to_limits()?,
                cgroup,
            };
            let mut cmd = std::process::Command::new(&command[0]);
            cmd.args(&command[1..]);
            if detach {
                // A detached job must not hold our stdout: whoever reads the slot name from
                // it would wait for the job to end.
                let (out, err) = detached_output(output_file.as_deref())?;
                cmd.stdin(Stdio::null()).stdout(out).stderr(err);
                let (rec, warnings, _child) =
                    t.start(&spec, &mut cmd, &isolation.to_isolation()?, true)?;
                output::warnings(&warnings);
                println!("{}", rec.name);
                return Ok(ExitCode::SUCCESS);
            }
            // Opened before the job runs (it could plant a link at the path meanwhile), and
            // without following one.
            let summary_file = summary
                .as_deref()
                .map(|f| open_for_job("--summary", f, safe_open::Write::Replace))
                .transpose()?;
            let opts = RunOptions {
                keep_slot: keep,
                kill: KillOptions { timeout: seconds(kill_timeout)? },
                isolation: isolation.to_isolation()?,
            };
            let outcome = t.run(&spec, &mut cmd, &opts)?;
            output::run_outcome(&outcome);
            if let (Some(mut f), Some(file)) = (summary_file, summary) {
                let json = serde_json::to_vec_pretty(&outcome.usage)?;
                f.write_all(&json)
                    .with_context(|| format!("writing the summary to {}", file.display()))?;
            }
            Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8))
        }
        Command::Slots { json } => {
            output::slots(&Tracker::open(paths)?.slots()?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stat { slot, json } => {
            output::usage(&Tracker::open(paths)?.usage(&slot)?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ps { slot, threads, json } => {
            output::processes(&Tracker::open(paths)?.processes(&slot, threads)?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Adopt { slot, pid } => {
            let r = Tracker::open(paths)?.adopt(&slot, pid)?;
            println!(
                "adopted pid {pid} into slot {slot}: {} process(es), {} task(s) newly tagged",
                r.processes, r.tasks
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Kill { slot, timeout, json } => {
            let r =
                Tracker::open(paths)?.kill(&slot, &KillOptions { timeout: seconds(timeout)? })?;
            output::kill(&r, json)?;
            Ok(if r.is_complete() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Daemon { config } => {
            // A file named explicitly must exist; the default one may be absent (defaults).
            let required =
                config.is_some() || std::env::var_os(tracker::paths::CONFIG_ENV).is_some();
            let file = config.unwrap_or_else(Paths::config_file);
            let cfg = tracker::daemon::DaemonConfig::load(&paths, &file, required)?;
            tracker::daemon::run(paths, cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { json } => {
            let mut w = tracker::events::Watcher::open(&paths)?;
            loop {
                for ev in w.wait(None)? {
                    output::event(&ev, json)?;
                }
            }
        }
        Command::Set { slot, limits } => {
            let now = Tracker::open(paths)?.set_limits(&slot, &limits.to_limits()?)?;
            println!("{}", serde_json::to_string(&now)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Signal { slot, signal } => {
            let n = Tracker::open(paths)?.signal(&slot, signal)?;
            println!("slot {slot}: signal {signal} sent to {n} process(es)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Freeze { slot } => {
            let r = Tracker::open(paths)?.suspend(&slot)?;
            output::suspend(&slot, &r, true);
            Ok(ExitCode::SUCCESS)
        }
        Command::Thaw { slot } => {
            let r = Tracker::open(paths)?.resume(&slot)?;
            output::suspend(&slot, &r, false);
            Ok(ExitCode::SUCCESS)
        }
        Command::Release { slot } => {
            Tracker::open(paths)?.release(&slot)?;
            println!("released slot {slot}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load(
    paths: &Paths,
    max_slots: u32,
    cgroup_parent: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode> {
    let mut report =
        loader::load(paths, &LoadOptions { max_slots, cgroup_parent, ..Default::default() })?;
    // An upgrade also re-makes the slot cgroups systemd removed while they were empty.
    if let Ok(t) = Tracker::open(paths.clone()) {
        report.warnings.extend(t.restore_slot_cgroups());
    }
    let st = status::status(paths).context("reading the status after loading")?;
    if json {
        output::print_json(&serde_json::json!({ "load": report, "status": st }))?;
    } else {
        output::load(&report, &st);
    }
    Ok(ExitCode::SUCCESS)
}

fn detached_output(file: Option<&Path>) -> Result<(Stdio, Stdio)> {
    let Some(file) = file else {
        return Ok((Stdio::null(), Stdio::null()));
    };
    let f = open_for_job("--output", file, safe_open::Write::Append)?;
    Ok((f.try_clone()?.into(), f.into()))
}

fn seconds(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{s} is not a number of seconds"))
}

fn caller_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}
