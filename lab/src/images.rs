//! Where the guest and lab images live, and building them on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Overrides the cache directory (default `$HOME/.cache/netvmm`).
pub const CACHE_ENV: &str = "NETVMM_CACHE";
/// Overrides where the image build scripts are (default: this checkout's resources/).
pub const RESOURCES_ENV: &str = "NETVMM_RESOURCES";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot find the image builder {0}; set {RESOURCES_ENV} to the resources/ directory of a netvmm checkout")]
    NoBuilder(PathBuf),
    #[error("cannot run {script}: {source}")]
    Spawn {
        script: PathBuf,
        source: std::io::Error,
    },
    #[error("{script} failed ({status}); its messages are above")]
    Failed {
        script: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("{script} finished but {missing} is missing")]
    Incomplete { script: PathBuf, missing: PathBuf },
    #[error("neither {CACHE_ENV} nor HOME is set: no place for the image cache")]
    NoCache,
}

/// Which Debian kernel the guest image carries (the initramfs is the same, with that
/// kernel's modules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestFlavour {
    /// `linux-image-cloud-amd64`: the default guest, and the lab host's kernel.
    #[default]
    Cloud,
    /// `linux-image-amd64`: the kernel of a standard Debian install.
    Generic,
}

impl GuestFlavour {
    /// The image's directory under the cache.
    fn dir(self) -> &'static str {
        match self {
            GuestFlavour::Cloud => "guest",
            GuestFlavour::Generic => "guest-generic",
        }
    }

    /// The Debian metapackage the builder resolves to a versioned kernel package.
    pub fn metapackage(self) -> &'static str {
        match self {
            GuestFlavour::Cloud => "linux-image-cloud-amd64",
            GuestFlavour::Generic => "linux-image-amd64",
        }
    }
}

/// Paths of the built images.
#[derive(Debug, Clone)]
pub struct Images {
    pub guest_kernel: PathBuf,
    pub guest_vmlinux: PathBuf,
    pub guest_initrd: PathBuf,
    pub lab_kernel: PathBuf,
    pub lab_initrd: PathBuf,
}

pub fn cache_dir() -> Result<PathBuf, ImageError> {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").ok_or(ImageError::NoCache)?;
    Ok(PathBuf::from(home).join(".cache/netvmm"))
}

pub fn resources_dir() -> PathBuf {
    std::env::var_os(RESOURCES_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources"))
}

/// Runs a builder script; the scripts are idempotent and return at once when up to date.
fn build(
    script_name: &str,
    out: &Path,
    env: &[(&str, &str)],
    expect: &[&Path],
) -> Result<(), ImageError> {
    let script = resources_dir().join(script_name);
    if !script.is_file() {
        return Err(ImageError::NoBuilder(script));
    }
    let status = Command::new("bash")
        .arg(&script)
        .arg(out)
        .envs(env.iter().copied())
        .status()
        .map_err(|source| ImageError::Spawn {
            script: script.clone(),
            source,
        })?;
    if !status.success() {
        return Err(ImageError::Failed { script, status });
    }
    for p in expect {
        if !p.is_file() {
            return Err(ImageError::Incomplete {
                script,
                missing: p.to_path_buf(),
            });
        }
    }
    Ok(())
}

impl Images {
    fn at(cache: &Path, flavour: GuestFlavour) -> Self {
        let guest = cache.join(flavour.dir());
        let lab = cache.join("lab");
        Self {
            guest_kernel: guest.join("vmlinuz"),
            guest_vmlinux: guest.join("vmlinux"),
            guest_initrd: guest.join("initrd.cpio.gz"),
            lab_kernel: lab.join("vmlinuz"),
            lab_initrd: lab.join("base.cpio.gz"),
        }
    }

    /// The guest image, built if missing or out of date.
    pub fn guest() -> Result<Self, ImageError> {
        Self::guest_of(GuestFlavour::Cloud)
    }

    /// The guest image with the given kernel, built if missing or out of date.
    pub fn guest_of(flavour: GuestFlavour) -> Result<Self, ImageError> {
        let cache = cache_dir()?;
        let i = Self::at(&cache, flavour);
        build(
            "build-guest.sh",
            &cache.join(flavour.dir()),
            &[("NETVMM_KERNEL_META", flavour.metapackage())],
            &[&i.guest_kernel, &i.guest_vmlinux, &i.guest_initrd],
        )?;
        Ok(i)
    }

    /// A guest kernel built from Debian's linux-source-6.1 with `make tinyconfig` and
    /// netvmm's config fragment merged on top (`netvmm kconfig`), built if missing or out of
    /// date: minutes, once per fragment.
    pub fn tiny_kernel() -> Result<PathBuf, ImageError> {
        let out = cache_dir()?.join("tinykernel");
        let kernel = out.join("bzImage");
        build("build-kernel.sh", &out, &[], &[&kernel])?;
        Ok(kernel)
    }

    /// A Debian 12 root filesystem image (systemd, iproute2, iperf3; raw ext4) for
    /// `--disk` and `root=/dev/vda`, built if missing or out of date: a minute or so,
    /// once, with mmdebstrap (resources/build-rootfs.sh).
    pub fn rootfs() -> Result<PathBuf, ImageError> {
        let out = cache_dir()?.join("rootfs");
        let image = out.join("rootfs.ext4");
        build("build-rootfs.sh", &out, &[], &[&image])?;
        Ok(image)
    }

    /// Guest and lab images, built if missing or out of date.
    pub fn all() -> Result<Self, ImageError> {
        let i = Self::guest()?;
        let cache = cache_dir()?;
        build(
            "build-lab.sh",
            &cache.join("lab"),
            &[],
            &[&i.lab_kernel, &i.lab_initrd],
        )?;
        Ok(i)
    }
}
