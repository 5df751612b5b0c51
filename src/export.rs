//! `drover export`: the one command that writes where the user says, outside the store.
//!
//! A file (a table or a blob) is written to a temporary file beside its destination, synced,
//! and renamed into place, so that an interrupted export leaves the old file or the new one,
//! never half of one; an existing file is replaced only with `--force`. A directory (a `dir`
//! output) is assembled beside its destination and renamed into place the same way, and only
//! ever onto a new or empty directory: nothing of the user's is deleted.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use drover_cache::{ObjectHash, OutputKind, OutputRef, Store};
use drover_engine::{OpError, OpErrorKind};

use crate::Failure;

/// Prefix of the temporary files and directories an export writes beside its destination.
const TEMP_PREFIX: &str = ".drover-export-";

/// Writes output `out` (of port `port`) to `dest`.
pub fn export(store: &Store, port: &str, out: &OutputRef, dest: &Path, force: bool) -> Result<(), Failure> {
    let src = store.object_path(&out.hash);
    match out.kind {
        OutputKind::Table => {
            // A directory given for a file is named before its (missing) extension is.
            not_a_directory(dest, "a table", &format!("{port}.csv"))?;
            let format = drover_ops::kit::table::export_format(dest).map_err(op_failure)?;
            write_file(dest, force, |file| {
                drover_ops::kit::table::write_table_as(&src, format, file, dest).map_err(op_failure)
            })
        }
        OutputKind::Blob => {
            not_a_directory(dest, "a blob", port)?;
            write_file(dest, force, |mut file| {
                let mut from = fs::File::open(&src).map_err(|e| io_failure("read", &src, e))?;
                std::io::copy(&mut from, &mut file).map(drop).map_err(|e| io_failure("write", dest, e))
            })
        }
        OutputKind::Dir => write_dir(store, &out.hash, dest),
    }
}

fn not_a_directory(dest: &Path, what: &str, example: &str) -> Result<(), Failure> {
    if !dest.is_dir() {
        return Ok(());
    }
    Err(Failure::User(miette::miette!(
        help = format!("name a file, e.g. {}", dest.join(example).display()),
        "{} is a directory; {what} is exported to a file",
        dest.display()
    )))
}

/// Writes a file through `write` to a temporary file beside `dest`, then renames it to `dest`.
fn write_file(dest: &Path, force: bool, write: impl FnOnce(&fs::File) -> Result<(), Failure>) -> Result<(), Failure> {
    if !force && fs::symlink_metadata(dest).is_ok() {
        return Err(already_exists(dest));
    }
    let parent = parent_dir(dest)?;
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(parent)
        .map_err(|e| io_failure("create a temporary file in", parent, e))?;
    write(tmp.as_file())?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
        .map_err(|e| io_failure("set permissions of", tmp.path(), e))?;
    tmp.as_file().sync_all().map_err(|e| io_failure("sync", tmp.path(), e))?;
    // Without --force the rename refuses to replace a file that appeared meanwhile.
    let placed = if force { tmp.persist(dest) } else { tmp.persist_noclobber(dest) };
    match placed {
        Ok(_) => {}
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Err(already_exists(dest)),
        Err(e) => return Err(io_failure("rename a temporary file to", dest, e.error)),
    }
    sync_dir(parent);
    Ok(())
}

/// Writes a `dir` output's files to a temporary directory beside `dest`, then renames it to
/// `dest`, which must be new or empty.
fn write_dir(store: &Store, manifest: &ObjectHash, dest: &Path) -> Result<(), Failure> {
    let taken = |problem: &str| {
        Failure::User(miette::miette!(
            help = "a dir output is exported to a new or empty directory (`--force` replaces files, never directories)",
            "{} {problem}",
            dest.display()
        ))
    };
    match fs::metadata(dest) {
        Ok(m) if !m.is_dir() => return Err(taken("is a file")),
        Ok(_) if fs::read_dir(dest).map(|mut d| d.next().is_some()).unwrap_or(true) => {
            return Err(taken("exists and is not empty"));
        }
        _ => {}
    }
    let m = store.read_manifest(manifest).map_err(|e| Failure::Environment(e.to_string()))?;
    let parent = parent_dir(dest)?;
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempdir_in(parent)
        .map_err(|e| io_failure("create a temporary directory in", parent, e))?;
    for f in &m.files {
        let to = tmp.path().join(&f.path);
        let dir = to.parent().unwrap_or(tmp.path());
        fs::create_dir_all(dir).map_err(|e| io_failure("create", dir, e))?;
        let from = store.object_path(&f.hash);
        fs::copy(&from, &to).map_err(|e| io_failure("copy", &from, e))?;
        let mode = if f.executable { 0o755 } else { 0o644 };
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))
            .map_err(|e| io_failure("set permissions of", &to, e))?;
    }
    // A temporary directory is private (0700); the export is not.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
        .map_err(|e| io_failure("set permissions of", tmp.path(), e))?;
    // rename(2) replaces an empty directory and refuses one that is not (filled meanwhile).
    if let Err(e) = fs::rename(tmp.path(), dest) {
        return Err(match e.kind() {
            std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists => {
                taken("exists and is not empty")
            }
            _ => io_failure("rename a temporary directory to", dest, e),
        });
    }
    // Renamed: nothing is left for the guard to remove.
    let _ = tmp.keep();
    sync_dir(parent);
    Ok(())
}

fn already_exists(dest: &Path) -> Failure {
    Failure::User(miette::miette!(
        help = "export to another path, or replace the file (atomically) with --force",
        "{} already exists; pass --force to overwrite it",
        dest.display()
    ))
}

/// The directory `dest` goes in, created if missing.
fn parent_dir(dest: &Path) -> Result<&Path, Failure> {
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| io_failure("create", parent, e))?;
    Ok(parent)
}

/// Makes a rename durable (best effort: the export is complete either way).
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn io_failure(action: &str, path: &Path, e: std::io::Error) -> Failure {
    Failure::Environment(format!("cannot {action} {}: {e}", path.display()))
}

/// An op's error: its own failure (a format that cannot hold the table) is the user's to fix,
/// an environment failure is not.
fn op_failure(e: OpError) -> Failure {
    match e.kind {
        OpErrorKind::Failed => Failure::User(miette::miette!("{}", e.message)),
        OpErrorKind::Environment => Failure::Environment(e.message),
    }
}
