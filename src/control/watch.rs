//! Reload triggers: the config file watcher, a periodic re-read, and SIGHUP.
//!
//! The watcher observes the file's *directory*, not the file: on inotify a watch on the file
//! goes silent after the first rename or Kubernetes `..data` symlink swap, and a directory
//! watch sees a ConfigMap update only as events on `..data`/`..data_tmp`. So any event in the
//! directory means "maybe changed": after a quiet period the file is read through its symlinks
//! and applied only if its content hash differs from what was last seen.
//!
//! A file being written in place can be read half-written. Two guards make sure that never
//! applies: while the file has been modified and not yet closed by its writer we keep waiting
//! (however long: inotify reports the close, and a writer that holds the file open for minutes
//! is still writing it), and the content must read the same twice, [`SETTLE`] apart. Only when
//! the watcher cannot know any more — the file was removed or renamed away, or the kernel's
//! event queue overflowed — is the writer assumed gone.

use super::{Control, ReloadOutcome, Trigger};
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

/// Quiet time after the last event before reading the file.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// Gap between the two reads that must agree.
pub const SETTLE: Duration = Duration::from_millis(10);
/// How long the file may stay unreadable, empty or changing (with no writer holding it open)
/// before that is reported as a failed reload.
pub const UNSETTLED_MAX_WAIT: Duration = Duration::from_secs(2);
/// Safety net: re-read the file this often even without events.
pub const PERIODIC: Duration = Duration::from_secs(10);

/// Watch `control`'s config file and reload on change, on SIGHUP and periodically, until the
/// returned task is aborted.
pub fn spawn(control: Arc<Control>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let path = control
        .path()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no config file to watch"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, rx) = mpsc::unbounded_channel::<notify::Result<Event>>();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = tx.send(ev);
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    // TLS certificate directories too (deduplicated): cert-manager and Kubernetes Secrets
    // rotate certificates by the same symlink swap as ConfigMaps.
    let mut dirs = vec![dir.clone()];
    for f in control.watched_files() {
        let d = match f.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dirs.contains(&d) {
            watcher.watch(&d, RecursiveMode::NonRecursive)?;
            dirs.push(d);
        }
    }
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        // The watcher stops when dropped; keep it alive as long as this task.
        let _watcher = watcher;
        #[cfg(unix)]
        run(control, path, rx, hup).await;
    }))
}

#[cfg(unix)]
async fn run(
    control: Arc<Control>,
    path: PathBuf,
    mut rx: mpsc::UnboundedReceiver<notify::Result<Event>>,
    mut hup: tokio::signal::unix::Signal,
) {
    let mut names: Vec<std::ffi::OsString> = path
        .file_name()
        .map(|n| n.to_os_string())
        .into_iter()
        .collect();
    names.extend(
        control
            .watched_files()
            .iter()
            .filter_map(|f| f.file_name().map(|n| n.to_os_string())),
    );
    let mut w = WatchState {
        names,
        writer_open: false,
    };
    let mut periodic = tokio::time::interval_at(Instant::now() + PERIODIC, PERIODIC);
    let far = || Instant::now() + Duration::from_secs(86_400);
    let mut deadline = far();
    let mut pending = false;
    // When the file was first found unreadable, empty or changing during this pending change.
    let mut unsettled_since: Option<Instant> = None;
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                if w.note(ev) {
                    pending = true;
                    deadline = Instant::now() + DEBOUNCE;
                }
            }
            _ = sleep_until(deadline), if pending => {
                if w.writer_open {
                    deadline = Instant::now() + DEBOUNCE;
                    continue;
                }
                let read = read_stable(&path).await;
                // Events that queued while we were reading mean the file may have changed
                // under us (e.g. an in-place write just truncated it): look again later.
                let mut moved = false;
                while let Ok(ev) = rx.try_recv() {
                    moved |= w.note(ev);
                }
                let since = *unsettled_since.get_or_insert_with(Instant::now);
                match read {
                    Read::Stable(text) if !moved => {
                        pending = false;
                        unsettled_since = None;
                        deadline = far();
                        control.reload_text(&text, Trigger::Watch, false);
                        let _ = control.reload_certs(Trigger::Watch);
                    }
                    // Missing for a moment (rm + create) or changing is normal; for long, it
                    // is an error worth reporting once.
                    Read::Unreadable | Read::Changing if since.elapsed() >= UNSETTLED_MAX_WAIT => {
                        pending = false;
                        unsettled_since = None;
                        deadline = far();
                        control.reload(Trigger::Watch, false);
                    }
                    _ => deadline = Instant::now() + DEBOUNCE,
                }
            }
            _ = periodic.tick() => {
                // A change in progress is the debounced path's job; reading now could catch
                // an in-place write half done.
                if pending || w.writer_open {
                    continue;
                }
                if let Read::Stable(text) = read_stable(&path).await {
                    control.reload_text(&text, Trigger::Periodic, false);
                }
                let _ = control.reload_certs(Trigger::Periodic);
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading config");
                if let ReloadOutcome::Unchanged { generation } = control.reload(Trigger::Signal, true) {
                    tracing::info!(generation, "config unchanged");
                }
                let _ = control.reload_certs(Trigger::Signal);
            }
        }
    }
}

/// What the watcher has learned from events about the files it reloads.
struct WatchState {
    /// File names of the config and of the TLS certificates and keys.
    names: Vec<std::ffi::OsString>,
    /// The file was modified and its writer has not closed it yet.
    writer_open: bool,
}

impl WatchState {
    /// Record an event; true if it may mean the file changed. Opens are not changes (our own
    /// reads cause them, and would otherwise make the watcher re-read forever).
    fn note(&mut self, ev: notify::Result<Event>) -> bool {
        match ev {
            Ok(ev) if ev.need_rescan() => {
                // Events were lost (queue overflow): a close may be among them.
                tracing::warn!("config watcher lost events; re-reading the file");
                self.writer_open = false;
                true
            }
            Ok(ev) => {
                if matches!(
                    ev.kind,
                    EventKind::Access(AccessKind::Open(_) | AccessKind::Read)
                        | EventKind::Access(AccessKind::Close(AccessMode::Read))
                ) {
                    return false;
                }
                if ev.paths.iter().any(|p| is_our_file(p, &self.names)) {
                    match ev.kind {
                        EventKind::Modify(ModifyKind::Data(_))
                        | EventKind::Modify(ModifyKind::Any) => {
                            self.writer_open = true;
                        }
                        // Closed by its writer; or replaced, removed, renamed away: whoever
                        // held the old file open is not writing this name any more.
                        EventKind::Access(AccessKind::Close(AccessMode::Write))
                        | EventKind::Create(_)
                        | EventKind::Remove(_)
                        | EventKind::Modify(ModifyKind::Name(_)) => self.writer_open = false,
                        _ => {}
                    }
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "config watcher error; the periodic re-read still runs");
                false
            }
        }
    }
}

fn is_our_file(p: &Path, names: &[std::ffi::OsString]) -> bool {
    p.file_name().is_some_and(|f| names.iter().any(|n| n == f))
}

enum Read {
    /// Two reads [`SETTLE`] apart agree (and the file is not empty).
    Stable(String),
    /// The reads differ, or the file is empty: an in-place writer has just truncated it.
    Changing,
    Unreadable,
}

async fn read_stable(path: &Path) -> Read {
    let Ok(first) = tokio::fs::read_to_string(path).await else {
        return Read::Unreadable;
    };
    tokio::time::sleep(SETTLE).await;
    match tokio::fs::read_to_string(path).await {
        Ok(second) if second == first && !first.trim().is_empty() => Read::Stable(first),
        Ok(_) => Read::Changing,
        Err(_) => Read::Unreadable,
    }
}
