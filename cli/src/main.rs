//! `netvmm`: parse the command line into typed configs and call the vmm and lab libraries.
//! Every failure ends as one line on stderr and a non-zero status, never a panic.

mod args;
mod compare;
mod doctor;
mod guest_command;
mod lab_cmd;

use clap::Parser;

use args::{Cli, Command};

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
            let config = a.into_config()?;
            if !config.seccomp {
                eprintln!("netvmm: --seccomp=off: no seccomp filters, for debugging only");
            }
            let vm = vmm::Vmm::new(config)?;
            for nic in vm.nics() {
                eprintln!("netvmm: {nic}");
            }
            for disk in vm.disks() {
                eprintln!("netvmm: {disk}");
            }
            let outcome = vm.run()?;
            if let Some(msg) = outcome.message() {
                eprintln!("netvmm: {msg}");
            }
            Ok(outcome.exit_code())
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
    }
}
