//! Build script of the `tickwire` binary: stamps `--version` with the git commit
//! (`TICKWIRE_GIT_COMMIT`: that environment variable when set, as in a container build without
//! `.git`; else `git rev-parse --short HEAD`; else "unknown") and the build date
//! (`TICKWIRE_BUILD_DATE`, UTC, from `SOURCE_DATE_EPOCH` when set, for reproducible builds).
//! It never fails the build.
//!
//! It reruns only when the checked-out commit changes (HEAD, its branch's ref, packed refs) or
//! `SOURCE_DATE_EPOCH` does, not on every source edit: so the date is the day the commit was
//! first built here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=TICKWIRE_GIT_COMMIT");
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let given = std::env::var("TICKWIRE_GIT_COMMIT").ok();
    let commit = (given.map(|c| c.trim().to_string()).filter(|c| !c.is_empty()))
        .or_else(|| git(&root, &["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    for file in watched(&root) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rustc-env=TICKWIRE_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=TICKWIRE_BUILD_DATE={}", date(build_time()));
}

/// The output of a git command run in `dir`, trimmed; `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

/// The files whose change means another commit is checked out. In a worktree, HEAD lives in
/// its own git dir and the refs in the common one. Only existing files: a missing one would
/// make cargo rerun this script on every build.
fn watched(root: &Path) -> Vec<PathBuf> {
    let absolute = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            root.join(p)
        }
    };
    let Some(git_dir) = git(root, &["rev-parse", "--git-dir"]).map(absolute) else {
        return Vec::new();
    };
    let common = git(root, &["rev-parse", "--git-common-dir"]).map_or_else(|| git_dir.clone(), absolute);
    let mut files = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(branch) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
        files.push(common.join(branch));
    }
    files.retain(|f| f.is_file());
    files
}

/// Seconds since the Unix epoch: `SOURCE_DATE_EPOCH`, else now.
fn build_time() -> u64 {
    let pinned = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    pinned.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// `YYYY-MM-DD` (UTC) of a Unix time, by Howard Hinnant's `civil_from_days`: no date crate
/// for one line of `--version`.
fn date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
