//! A value made from files and made again when they change: the client certificate and the
//! trust roots, as cert-manager or a SPIFFE agent rotates them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

/// How often, at most, the files' stamps are looked at.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What identifies a file's content without reading it: modification time, length and, on
/// Unix, inode and change time (a Kubernetes secret volume swaps a symlink to new files).
type Stamp = Option<(SystemTime, u64, u64, i64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (inode, changed) = {
        use std::os::unix::fs::MetadataExt;
        (meta.ino(), meta.ctime_nsec() ^ (meta.ctime() << 30))
    };
    #[cfg(not(unix))]
    let (inode, changed) = (0, 0);
    Some((meta.modified().ok()?, meta.len(), inode, changed))
}

/// When the files were last looked at, and what they were when the current value was made.
struct Checked {
    stamps: Vec<Stamp>,
    at: Instant,
}

type Load<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

/// A value made by `load` from `files` (or given, and never remade).
pub(crate) struct Watched<T> {
    /// What the value is, for logs: `client certificate`, `trust roots`.
    what: &'static str,
    /// The counter of reloads, by `outcome`.
    metric: &'static str,
    files: Vec<PathBuf>,
    load: Option<Load<T>>,
    current: ArcSwap<T>,
    checked: Mutex<Checked>,
}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The files' names only: never the value (a key).
        f.debug_struct("Watched")
            .field("what", &self.what)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl<T> Watched<T> {
    /// A value that never changes.
    pub(crate) fn fixed(what: &'static str, value: T) -> Self {
        Watched {
            what,
            metric: "",
            files: Vec::new(),
            load: None,
            current: ArcSwap::from_pointee(value),
            checked: Mutex::new(Checked {
                stamps: Vec::new(),
                at: Instant::now(),
            }),
        }
    }

    /// The value `load` makes now (its error if it cannot), made again when one of `files`
    /// changes. Without files, `load` runs once.
    pub(crate) fn new(
        what: &'static str,
        metric: &'static str,
        files: Vec<PathBuf>,
        load: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        // Stamps before reading: a change made while the files are read is seen at the
        // next check.
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let value = load()?;
        Ok(Watched {
            what,
            metric,
            load: (!files.is_empty()).then(|| Box::new(load) as Load<T>),
            files,
            current: ArcSwap::from_pointee(value),
            checked: Mutex::new(Checked {
                stamps,
                at: Instant::now(),
            }),
        })
    }

    /// The value now. At most once every [`CHECK_EVERY`], one caller (a handshake) looks
    /// at the files' stamps and, when they changed, makes the value again; the others never
    /// wait. Files that cannot be used (a rotation caught half-way, a file being written)
    /// keep the last good value: logged, counted, and tried again at the next check.
    pub(crate) fn current(&self) -> Arc<T> {
        if let Some(load) = &self.load
            && let Ok(mut checked) = self.checked.try_lock()
            && checked.at.elapsed() >= CHECK_EVERY
        {
            checked.at = Instant::now();
            self.check(load, &mut checked);
        }
        self.current.load_full()
    }

    #[cold]
    fn check(&self, load: &Load<T>, checked: &mut Checked) {
        let stamps: Vec<Stamp> = self.files.iter().map(|f| stamp(f)).collect();
        if stamps == checked.stamps {
            return;
        }
        match load() {
            Ok(value) => {
                tracing::info!(what = self.what, files = ?self.files, "reloaded");
                metrics::counter!(self.metric, "outcome" => "reloaded").increment(1);
                self.current.store(Arc::new(value));
                checked.stamps = stamps;
            }
            Err(error) => {
                tracing::warn!(
                    what = self.what,
                    files = ?self.files,
                    %error,
                    "changed but cannot be used; keeping the last good one"
                );
                metrics::counter!(self.metric, "outcome" => "failed").increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_made_again_and_a_bad_one_keeps_the_last_good_value() {
        let dir = std::env::temp_dir().join(format!("proxyless-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let file = dir.join("value");
        std::fs::write(&file, "1").expect("write");
        let read = {
            let file = file.clone();
            move || {
                let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
                text.trim().parse::<u32>().map_err(|e| e.to_string())
            }
        };
        let watched = Watched::new("number", "test.reloads", vec![file.clone()], read)
            .expect("a first value");
        assert_eq!(*watched.current(), 1);
        std::fs::write(&file, "not a number").expect("write");
        // Not looked at again before CHECK_EVERY.
        assert_eq!(*watched.current(), 1);
        watched.checked.lock().expect("unlocked").at -= CHECK_EVERY;
        assert_eq!(
            *watched.current(),
            1,
            "a bad file keeps the last good value"
        );
        std::fs::write(&file, "22").expect("write");
        watched.checked.lock().expect("unlocked").at -= CHECK_EVERY;
        assert_eq!(*watched.current(), 22);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_first_load_that_fails_is_an_error() {
        let error =
            Watched::<u32>::new(
                "number",
                "test.reloads",
                Vec::new(),
                || Err("no".to_owned()),
            )
            .expect_err("refused");
        assert_eq!(error, "no");
    }
}
