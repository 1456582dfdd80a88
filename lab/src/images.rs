//! Where the guest and lab images live, and building them on first use. Where that is
//! ([`ImageStore`]) is the caller's to say: this library reads no environment variable.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The variable that names the cache directory (default `$HOME/.cache/netvmm`). Programs
/// read it and give its value to [`ImageStore::from_settings`]; the build scripts are
/// handed the cache under this name, since they keep their downloads in it too.
pub const CACHE_ENV: &str = "NETVMM_CACHE";
/// The variable that names where the image build scripts are (default: this checkout's
/// resources/), read by programs like [`CACHE_ENV`].
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

/// Where the images are kept (`cache`) and the scripts that build them (`resources`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStore {
    pub cache: PathBuf,
    pub resources: PathBuf,
}

impl ImageStore {
    /// The store named by netvmm's settings, which `var` looks up by name (the CLI passes
    /// `std::env::var_os`; this library reads no environment itself): the cache is
    /// [`CACHE_ENV`], else `HOME`/.cache/netvmm; the scripts are in [`RESOURCES_ENV`],
    /// else in the resources/ directory of the checkout this was built from.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<Self, ImageError> {
        let cache = match var(CACHE_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(var("HOME").ok_or(ImageError::NoCache)?).join(".cache/netvmm"),
        };
        let resources = var(RESOURCES_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources"));
        Ok(Self { cache, resources })
    }
}

/// Runs a builder script; the scripts are idempotent and return at once when up to date.
fn build(
    store: &ImageStore,
    script_name: &str,
    out: &Path,
    env: &[(&str, &str)],
    expect: &[&Path],
) -> Result<(), ImageError> {
    let script = store.resources.join(script_name);
    if !script.is_file() {
        return Err(ImageError::NoBuilder(script));
    }
    let status = Command::new("bash")
        .arg(&script)
        .arg(out)
        // The scripts keep their downloaded packages in the cache: the same one.
        .env(CACHE_ENV, &store.cache)
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
    pub fn guest(store: &ImageStore) -> Result<Self, ImageError> {
        Self::guest_of(store, GuestFlavour::Cloud)
    }

    /// The guest image with the given kernel, built if missing or out of date.
    pub fn guest_of(store: &ImageStore, flavour: GuestFlavour) -> Result<Self, ImageError> {
        let cache = &store.cache;
        let i = Self::at(cache, flavour);
        build(
            store,
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
    pub fn tiny_kernel(store: &ImageStore) -> Result<PathBuf, ImageError> {
        let out = store.cache.join("tinykernel");
        let kernel = out.join("bzImage");
        build(store, "build-kernel.sh", &out, &[], &[&kernel])?;
        Ok(kernel)
    }

    /// A Debian 12 root filesystem image (systemd, iproute2, iperf3; raw ext4) for
    /// `--disk` and `root=/dev/vda`, built if missing or out of date: a minute or so,
    /// once, with mmdebstrap (resources/build-rootfs.sh).
    pub fn rootfs(store: &ImageStore) -> Result<PathBuf, ImageError> {
        let out = store.cache.join("rootfs");
        let image = out.join("rootfs.ext4");
        build(store, "build-rootfs.sh", &out, &[], &[&image])?;
        Ok(image)
    }

    /// Guest and lab images, built if missing or out of date.
    pub fn all(store: &ImageStore) -> Result<Self, ImageError> {
        let i = Self::guest(store)?;
        build(
            store,
            "build-lab.sh",
            &store.cache.join("lab"),
            &[],
            &[&i.lab_kernel, &i.lab_initrd],
        )?;
        Ok(i)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A lookup over `pairs`, standing in for the environment.
    pub(crate) fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, OsString)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_cache_is_the_setting_else_under_home_and_none_without_both() {
        let all = [
            (CACHE_ENV, "/c"),
            ("HOME", "/home/u"),
            (RESOURCES_ENV, "/r"),
        ];
        let s = ImageStore::from_vars(vars(&all)).unwrap();
        assert_eq!(s.cache, Path::new("/c"));
        assert_eq!(s.resources, Path::new("/r"));
        let s = ImageStore::from_vars(vars(&[("HOME", "/home/u")])).unwrap();
        assert_eq!(s.cache, Path::new("/home/u/.cache/netvmm"));
        assert!(s.resources.join("build-guest.sh").is_file(), "{s:?}");
        let e = ImageStore::from_vars(vars(&[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "neither NETVMM_CACHE nor HOME is set: no place for the image cache"
        );
    }

    /// The build scripts are told the cache the caller chose (they keep their downloads
    /// in it), and a store without the scripts fails naming the script.
    #[test]
    fn the_builders_get_the_callers_cache_and_a_missing_one_is_named() {
        use std::io::Write;
        let dir = net::private_fs::PrivateDir::new("netvmm-test-images-").unwrap();
        let resources = dir.path().join("resources");
        std::fs::create_dir(&resources).unwrap();
        // A stand-in builder: each output file holds the cache it was told.
        let mut script = std::fs::File::create(resources.join("build-guest.sh")).unwrap();
        writeln!(
            script,
            "mkdir -p \"$1\"; for f in vmlinuz vmlinux initrd.cpio.gz; do \
             printf %s \"${CACHE_ENV}\" > \"$1/$f\"; done"
        )
        .unwrap();
        drop(script);
        let store = ImageStore {
            cache: dir.path().join("cache"),
            resources,
        };
        let i = Images::guest(&store).unwrap();
        assert!(i.guest_kernel.starts_with(&store.cache), "{i:?}");
        let told = std::fs::read_to_string(&i.guest_initrd).unwrap();
        assert_eq!(Path::new(&told), store.cache);

        let none = ImageStore {
            resources: dir.path().join("nothing here"),
            ..store
        };
        let e = Images::guest(&none).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot find the image builder") && e.contains("nothing here"),
            "{e}"
        );
    }
}
