//! Progress of long offline work, the one way it is shown: a bar on a terminal; on a pipe
//! or a file (CI, `nohup`, a Kubernetes Job) a plain line every 30 s and one at the end, so
//! redirected output is never silent for minutes.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LINE_EVERY: Duration = Duration::from_secs(30);

pub struct Progress {
    prefix: String,
    total: u64,
    view: View,
}

enum View {
    Hidden,
    Bar(ProgressBar),
    /// Done so far and when the last line was printed.
    Lines(Mutex<(u64, Instant)>),
}

impl Progress {
    /// Progress over `total` units of work, shown only if `visible`.
    pub fn new(visible: bool, total: usize, prefix: impl Into<String>) -> Progress {
        let (prefix, total) = (prefix.into(), total as u64);
        let view = if !visible {
            View::Hidden
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, {eta} left)",
                )
                .expect("a valid progress template")
                .progress_chars("=> "),
            );
            bar.set_prefix(prefix.clone());
            View::Bar(bar)
        } else {
            View::Lines(Mutex::new((0, Instant::now())))
        };
        Progress {
            prefix,
            total,
            view,
        }
    }

    /// `done` more units are finished; `message` says how it goes (e.g. the running loss).
    pub fn advance(&self, done: usize, message: impl FnOnce() -> String) {
        match &self.view {
            View::Hidden => {}
            View::Bar(bar) => {
                bar.set_message(message());
                bar.inc(done as u64);
            }
            View::Lines(state) => {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                state.0 += done as u64;
                if state.1.elapsed() >= LINE_EVERY {
                    state.1 = Instant::now();
                    eprintln!("{}: {}/{} {}", self.prefix, state.0, self.total, message());
                }
            }
        }
    }

    pub fn finish(&self, message: impl Into<String>) {
        match &self.view {
            View::Hidden => {}
            View::Bar(bar) => bar.finish_with_message(message.into()),
            View::Lines(_) => eprintln!("{}: {}", self.prefix, message.into()),
        }
    }
}
