//! What can stop `netvmm compare`, each naming the object that failed.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("--chart {}: {} is not a directory", chart.display(), dir.display())]
    ChartDir { chart: PathBuf, dir: PathBuf },
    #[error("--lab native cannot run here: {0}")]
    NativeUnavailable(String),
    #[error("the {lab} lab's scenario produced no results ({why}; its output is above)")]
    NoResults { lab: &'static str, why: String },
    #[error("cannot {what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot {what}: {source}")]
    Os {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("interrupted by signal {0}; the scenario was stopped and its namespaces are gone")]
    Interrupted(i32),
    #[error("the native scenario did not finish within {} s; it was stopped", .0.as_secs())]
    NativeTimeout(Duration),
    #[error("the native scenario printed nothing for {} s (it prints a heartbeat every 15 s); it was stopped", .0.as_secs())]
    NativeStalled(Duration),
    #[error(transparent)]
    Lab(#[from] lab::LabError),
    #[error(transparent)]
    Image(#[from] lab::ImageError),
}

impl CompareError {
    pub fn file(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| CompareError::File { what, path, source }
    }

    pub fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| CompareError::Os { what, source }
    }
}
