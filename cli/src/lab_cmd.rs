//! `netvmm image ...` and `netvmm lab ...`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lab::runner::shell_quote;
use lab::{ImageStore, Images, LabContext, LabRun};

use crate::args::{ImageArgs, ImageCommand, LabArgs, LabCommand, RunArgs};

/// What can stop `netvmm image ...` and `netvmm lab ...`, each naming the failing object.
#[derive(Debug, thiserror::Error)]
pub enum LabCmdError {
    #[error("cannot read scenario {}: {source}", path.display())]
    Scenario {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {} does not exist", path.display())]
    Missing {
        flag: &'static str,
        path: std::path::PathBuf,
    },
    #[error("--file {}: another --file has the same name; the lab keeps files by name", path.display())]
    SameName { path: std::path::PathBuf },
    #[error(
        "too many --disk options for the lab host: at most {}",
        lab::runner::MAX_LAB_DISKS
    )]
    TooManyDisks,
    #[error(transparent)]
    Disk(#[from] vmm::disks::DiskError),
    #[error(transparent)]
    Args(#[from] crate::args::ArgError),
    #[error(transparent)]
    Lab(#[from] lab::LabError),
    #[error(transparent)]
    Image(#[from] lab::ImageError),
}

type Result<T> = std::result::Result<T, LabCmdError>;

/// Where the lab's images are, from this process's environment: `NETVMM_CACHE` (else
/// `$HOME/.cache/netvmm`) and `NETVMM_RESOURCES` (else this checkout's resources/).
pub fn image_store() -> std::result::Result<ImageStore, lab::ImageError> {
    ImageStore::from_vars(|k| std::env::var_os(k))
}

/// A lab run's surroundings from this process's environment (the images, and
/// `NETVMM_LAB_SILENCE_S`), its progress lines on stderr.
pub fn lab_context() -> std::result::Result<LabContext, lab::ImageError> {
    let progress: lab::ProgressSink = Arc::new(|p| eprintln!("netvmm-lab: {p}"));
    LabContext::from_vars(|k| std::env::var_os(k), progress)
}

pub fn image(a: ImageArgs) -> Result<i32> {
    let store = image_store()?;
    // The images that are not the guest's kernel and initramfs.
    let other = match &a.command {
        ImageCommand::Path { part } if part == "tinykernel" => Some(Images::tiny_kernel(&store)?),
        ImageCommand::Path { part } if part == "rootfs" => Some(Images::rootfs(&store)?),
        ImageCommand::Build { rootfs: true } => Some(Images::rootfs(&store)?),
        _ => None,
    };
    if let Some(p) = other {
        println!("{}", p.display());
        return Ok(0);
    }
    let i = Images::guest_of(&store, a.flavour.into())?;
    match a.command {
        ImageCommand::Build { .. } => {
            println!("kernel  {}", i.guest_kernel.display());
            println!("vmlinux {}", i.guest_vmlinux.display());
            println!("initrd  {}", i.guest_initrd.display());
        }
        ImageCommand::Path { part } => {
            let p = match part.as_str() {
                "kernel" => &i.guest_kernel,
                "vmlinux" => &i.guest_vmlinux,
                _ => &i.guest_initrd,
            };
            println!("{}", p.display());
        }
    }
    Ok(0)
}

pub fn lab(a: LabArgs) -> Result<i32> {
    match a.command {
        LabCommand::Build => {
            let i = Images::all(&image_store()?)?;
            println!("lab kernel {}", i.lab_kernel.display());
            println!("lab initrd {}", i.lab_initrd.display());
            Ok(0)
        }
        LabCommand::Exec {
            script,
            files,
            timeout,
        } => {
            let text =
                std::fs::read_to_string(&script).map_err(|source| LabCmdError::Scenario {
                    path: script.clone(),
                    source,
                })?;
            let files = carried_files(&files)?;
            let mut run = LabRun::new(text, lab_context()?);
            run.files = files;
            run.memory_mib = a.lab_memory;
            if let Some(t) = timeout {
                run.timeout = t;
            }
            Ok(run.run()?)
        }
        LabCommand::Run(r) => {
            let mut run = lab_run_for(&r, lab_context)?;
            run.memory_mib = a.lab_memory;
            Ok(run.run()?)
        }
    }
}

/// `lab exec --file`s: each goes to /lab/files/<its file name>, which must be unique.
fn carried_files(files: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    let mut carried: Vec<(PathBuf, String)> = Vec::new();
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str());
        let (true, Some(name)) = (f.is_file(), name) else {
            return Err(LabCmdError::Missing {
                flag: "--file",
                path: f.clone(),
            });
        };
        let at = format!("/lab/files/{name}");
        if carried.iter().any(|(_, a)| *a == at) {
            return Err(LabCmdError::SameName { path: f.clone() });
        }
        carried.push((f.clone(), at));
    }
    Ok(carried)
}

/// Turns `netvmm run` arguments into a lab scenario: host files go in under /lab/files and
/// the serial log comes back out through the lab's status port. `context` is asked for
/// the run's surroundings once the arguments have passed their checks.
fn lab_run_for(
    r: &RunArgs,
    context: impl FnOnce() -> std::result::Result<LabContext, lab::ImageError>,
) -> Result<LabRun> {
    // Fail here, with the host path, rather than inside the lab.
    r.clone().into_config()?;
    let mut files = Vec::new();
    let mut args = vec!["netvmm".to_string(), "run".to_string()];
    let mut carry =
        |flag: &'static str, host: &Path, name: &str, args: &mut Vec<String>| -> Result<()> {
            if !host.is_file() {
                return Err(LabCmdError::Missing {
                    flag,
                    path: host.to_path_buf(),
                });
            }
            let at = format!("/lab/files/{name}");
            files.push((host.to_path_buf(), at.clone()));
            args.push(flag.to_string());
            args.push(at);
            Ok(())
        };
    carry("--kernel", &r.kernel, "kernel", &mut args)?;
    if let Some(i) = &r.initrd {
        carry("--initrd", i, "initrd", &mut args)?;
    }
    args.extend(["--cmdline".into(), r.cmdline.clone()]);
    args.extend(["--memory".into(), r.memory.to_string()]);
    args.extend(["--cpus".into(), r.cpus.to_string()]);
    if let Some(t) = r.timeout {
        args.extend(["--timeout".into(), t.as_secs_f64().to_string()]);
    }
    for n in &r.nets {
        args.extend(["--net".into(), n.clone()]);
    }
    // Disks go to the lab host as its own virtio disks: QEMU writes the host file itself.
    let mut disks = Vec::new();
    for d in &r.disks {
        let spec: vmm::disks::DiskSpec = d.parse().map_err(crate::args::ArgError::from)?;
        if disks.len() == lab::runner::MAX_LAB_DISKS {
            return Err(LabCmdError::TooManyDisks);
        }
        let lab_path = lab::runner::LabDisk::lab_path(disks.len());
        // The same checks as a native run, and the same lock (released again here: QEMU
        // takes its own on the file), so a bad or busy image fails before the lab boots.
        drop(vmm::disks::open(
            &spec,
            &vmm::disks::guest_name(disks.len()),
        )?);
        let ro = if spec.readonly { ",readonly" } else { "" };
        args.extend(["--disk".into(), format!("{lab_path}{ro}")]);
        disks.push(lab::runner::LabDisk {
            host: spec.path,
            readonly: spec.readonly,
        });
    }
    if r.seccomp == crate::args::Switch::Off {
        args.push("--seccomp=off".into());
    }
    if r.transport == crate::args::Transport::Pci {
        args.push("--transport=pci".into());
    }
    let mut run = LabRun::new(String::new(), context()?);
    if let Some(log) = &r.serial_log {
        args.extend(["--serial-log".into(), "/tmp/serial.log".into()]);
        run.outputs.push(("/tmp/serial.log".into(), log.clone()));
    }
    // Last: everything after `--` is the guest's.
    if !r.command.is_empty() {
        args.push("--".into());
        args.extend(r.command.iter().cloned());
    }
    run.script = args
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    run.files = files;
    run.disks = disks;
    if let Some(t) = r.timeout {
        run.timeout = t;
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A context for runs that are only built here, never booted.
    fn test_context() -> std::result::Result<LabContext, lab::ImageError> {
        let images = ImageStore {
            cache: PathBuf::from("/nonexistent-cache"),
            resources: PathBuf::from("/nonexistent-resources"),
        };
        Ok(LabContext::new(images, lab::progress::ignore()))
    }

    #[test]
    fn lab_run_carries_files_and_rewrites_paths() {
        let dir = std::env::temp_dir().join(format!("netvmm-labcmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = dir.join("bzImage");
        std::fs::write(&k, b"k").unwrap();
        let cli = crate::args::Cli::try_parse_from([
            "netvmm",
            "run",
            "--kernel",
            k.to_str().unwrap(),
            "--cmdline",
            "a 'b'",
            "--timeout",
            "5",
            "--serial-log",
            "/tmp/x.log",
        ])
        .unwrap();
        let crate::args::Command::Run(r) = cli.command else {
            panic!("not run")
        };
        let run = lab_run_for(&r, test_context).unwrap();
        assert_eq!(
            run.files,
            vec![(k.clone(), "/lab/files/kernel".to_string())]
        );
        assert!(run
            .script
            .starts_with("'netvmm' 'run' '--kernel' '/lab/files/kernel'"));
        assert!(run.script.contains(r#"'a '\''b'\'''"#), "{}", run.script);
        assert_eq!(run.outputs[0].1, Path::new("/tmp/x.log"));
        // Disks become the lab host's own virtio disks, read-only ones read-only.
        let img = dir.join("disk.raw");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let mut with_disks = r.clone();
        with_disks.disks = vec![
            img.display().to_string(),
            format!("{},readonly", img.display()),
        ];
        let run = lab_run_for(&with_disks, test_context).unwrap();
        assert!(
            run.script
                .contains("'--disk' '/dev/vda' '--disk' '/dev/vdb,readonly'"),
            "{}",
            run.script
        );
        assert_eq!(run.disks.len(), 2);
        assert!(!run.disks[0].readonly && run.disks[1].readonly);
        with_disks.disks = vec![dir.join("absent").display().to_string()];
        let e = lab_run_for(&with_disks, test_context)
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent") && e.contains("does not exist"), "{e}");
        // The transport goes along; the default needs no word.
        assert!(!run.script.contains("--transport"), "{}", run.script);
        let mut on_pci = r.clone();
        on_pci.transport = crate::args::Transport::Pci;
        let script = lab_run_for(&on_pci, test_context).unwrap().script;
        assert!(script.contains("'--transport=pci'"), "{script}");
        let mut with_command = r.clone();
        with_command.command = vec!["sh".into(), "-c".into(), "echo \"a b\"; exit 5".into()];
        let script = lab_run_for(&with_command, test_context).unwrap().script;
        assert!(
            script.ends_with(r#"'--' 'sh' '-c' 'echo "a b"; exit 5'"#),
            "{script}"
        );
        let mut missing = r.clone();
        missing.initrd = Some(dir.join("nope"));
        let err = lab_run_for(&missing, test_context).unwrap_err().to_string();
        assert!(err.contains("--initrd") && err.contains("nope"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exec_files_go_in_by_name_once() {
        let dir = std::env::temp_dir().join(format!("netvmm-labfiles-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let (a, b) = (dir.join("a.cpio"), dir.join("sub/a.cpio"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let got = carried_files(std::slice::from_ref(&a)).unwrap();
        assert_eq!(got, vec![(a.clone(), "/lab/files/a.cpio".to_string())]);
        let e = carried_files(&[a.clone(), b]).unwrap_err().to_string();
        assert!(e.contains("same name"), "{e}");
        let e = carried_files(&[dir.join("nope")]).unwrap_err().to_string();
        assert!(e.contains("--file") && e.contains("nope"), "{e}");
        let e = carried_files(std::slice::from_ref(&dir))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
