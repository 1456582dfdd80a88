//! `netvmm`: parse the command line into typed configs and call the vmm and lab libraries.
//! Every failure ends as one line on stderr and a non-zero status, never a panic.

mod args;
mod compare;
mod doctor;
mod guest_command;
mod lab_cmd;
use lab::signals;

use clap::Parser;

use args::{Cli, Command};

/// Lets `netvmm run` try a PVM /dev/kvm anyway (for kernels built for PVM).
const ALLOW_PVM_ENV: &str = "NETVMM_ALLOW_PVM";

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            // `netvmm` or `netvmm image` alone: the help, whose list of subcommands is the
            // answer, on stderr (clap puts it there for this kind), and status 1 as for any bad
            // argument.
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                std::process::exit(1);
            }
            // clap's first line names the bad argument; the usage block after it is noise
            // for a CI log, and a bad argument is an error like any other (status 1).
            eprintln!("netvmm: {}", args::one_line_error(&e.render().to_string()));
            std::process::exit(1);
        }
    };
    let code = match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netvmm: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn run(command: Command) -> Result<i32, Box<dyn std::error::Error>> {
    match command {
        Command::Run(a) => {
            let mut config = a.into_config()?;
            config.allow_pvm = std::env::var_os(ALLOW_PVM_ENV).is_some();
            if !config.seccomp {
                eprintln!("netvmm: --seccomp=off: no seccomp filters, for debugging only");
            }
            let notices: vmm::Notices = std::sync::Arc::new(|n| eprintln!("netvmm: {n}"));
            let vm = vmm::Vmm::new(config, notices)?;
            for nic in vm.nics() {
                eprintln!("netvmm: {nic}");
                for note in &nic.notes {
                    eprintln!("netvmm: {}: {note}", nic.guest_name);
                }
            }
            for disk in vm.disks() {
                eprintln!("netvmm: {disk}");
            }
            let finished = vm.run()?;
            if std::env::var_os(vmm::report::REPORT_ENV).is_some() {
                for line in &finished.report {
                    eprintln!("{line}");
                }
            }
            if let Some(msg) = finished.outcome.message() {
                eprintln!("netvmm: {msg}");
            }
            Ok(finished.outcome.exit_code())
        }
        Command::Doctor => Ok(doctor::run()),
        Command::Kconfig => {
            print!("{}", lab::KCONFIG_FRAGMENT);
            Ok(0)
        }
        Command::Cleanup => {
            let mut removed = net::tc_redirect::cleanup_stale()?;
            removed.extend(net::owned::cleanup_stale()?);
            removed.extend(net::shim::cleanup_stale()?);
            removed.extend(
                net::nat::cleanup_stale()?
                    .into_iter()
                    .map(|t| format!("nftables table '{t}'")),
            );
            if removed.is_empty() {
                println!("nothing left behind by netvmm");
            }
            for name in removed {
                println!("removed {name}");
            }
            Ok(0)
        }
        Command::Image(a) => Ok(lab_cmd::image(a)?),
        Command::Lab(a) => Ok(lab_cmd::lab(a)?),
        Command::Compare(a) => Ok(compare::run(a)?),
        Command::CompareScenario(a) => Ok(compare::run_scenario(a)),
    }
}
